"""Notebook 01: silent_failure_case and lora_update."""
from catalogue import bug, variant

ENTRIES = [
    bug("01-attempt-1-elementwise-update", "01", {"lora_update_answer": """
def lora_update(x, lora_A, lora_B, scaling):
    return scaling * (lora_A @ lora_B) * x
"""}, "lora_update_shape", "`*` is elementwise"),
    bug("01-materialized-update", "01", {"lora_update_answer": """
def lora_update(x, lora_A, lora_B, scaling):
    return x @ (lora_A @ lora_B) * scaling
"""}, "lora_update_never_forms_AB", "did you form A @ B"),
    bug("01-silent-case-that-crashes", "01", {"silent_failure_case_answer": """
def silent_failure_case():
    return dict(in_features=8, out_features=8, rank=2, x_shape=(5, 8))
"""}, "silent_failure_case", "raised an exception"),
    variant("01-einsum-update", "01", {"lora_update_answer": """
import torch

def lora_update(x, lora_A, lora_B, scaling):
    return torch.einsum("...i,ir,ro->...o", x, lora_A, lora_B) * scaling
"""}),
    variant("01-scaling-first", "01", {"lora_update_answer": """
def lora_update(x, lora_A, lora_B, scaling):
    return ((scaling * x) @ lora_A) @ lora_B
"""}),
]
