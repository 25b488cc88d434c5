"""Notebook 05's solution computes what Hugging Face PEFT computes, to the last bit: the same
outputs from the same adapter weights, the same weights after identical Adam steps, and the same
merged model. PEFT is an optional extra (`pip install -e ".[peft]"`), which CI installs."""
import copy
import json
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft", reason="the optional extra: pip install -e '.[peft]'")

ROOT = Path(__file__).resolve().parents[1]
SOLUTION_CELLS = ("lora_linear_given", "model_and_training_given", "add_lora_answer", "merge_all_answer")
TARGETS, RANK, ALPHA = ["0", "2"], 4, 8  # scaling 2: a power of two, so (s·B)@A and (B@A)·s agree bitwise
HEAD = "4"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """As the notebook runs: small matrices, where a second thread's spinning only costs time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def solution():
    """The solution notebook's LoRALinear, make_mlp, add_lora and merge_all."""
    notebook = json.loads((ROOT / "solutions" / "lora" / "05_lora_end_to_end.ipynb").read_text())
    namespace = {}
    exec("import copy, math\nimport torch\nimport torch.nn as nn\nimport torch.nn.functional as F", namespace)
    for cell in notebook["cells"]:
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") in SOLUTION_CELLS:
            exec("".join(cell["source"]), namespace)
    return namespace


@pytest.fixture
def twins(solution):
    """Our adapted model and PEFT's, from one pretrained model, holding the same non-zero adapter."""
    torch.manual_seed(0)
    pretrained = solution["make_mlp"]()
    ours = solution["add_lora"](copy.deepcopy(pretrained), TARGETS, rank=RANK, alpha=ALPHA, trainable=[HEAD])
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, modules_to_save=[HEAD], lora_dropout=0.0)
    theirs = peft.get_peft_model(copy.deepcopy(pretrained), config)
    with torch.no_grad():
        for name in TARGETS:
            layer = ours.get_submodule(name)
            torch.nn.init.normal_(layer.lora_B.weight, std=0.1)  # as if trained: B = 0 would hide mistakes
            their_layer = theirs.base_model.model.get_submodule(name)
            their_layer.lora_A["default"].weight.copy_(layer.lora_A.weight)  # (r, in) in both
            their_layer.lora_B["default"].weight.copy_(layer.lora_B.weight)  # (out, r) in both
    return ours, theirs, torch.randn(64, 64), torch.randint(0, 10, (64,))


def _max_difference(a, b) -> float:
    return (a - b).abs().max().item()


def test_same_adapter_same_outputs(twins):
    ours, theirs, x, _ = twins
    with torch.no_grad():
        assert _max_difference(ours(x), theirs(x)) == 0.0


def test_same_trainable_parameters(twins):
    ours, theirs, _, _ = twins
    count = lambda model: sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count(ours) == count(theirs) == RANK * (64 + 256) + RANK * (256 + 256) + (256 + 1) * 10 == 5_898


def test_identical_adam_steps_keep_them_identical(twins):
    ours, theirs, x, y = twins
    optimizers = [torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2) for model in (ours, theirs)]
    for _ in range(200):
        for model, optimizer in zip((ours, theirs), optimizers):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    with torch.no_grad():
        assert _max_difference(ours(x), theirs(x)) == 0.0
        for name in TARGETS:
            their_layer = theirs.base_model.model.get_submodule(name)
            assert torch.equal(ours.get_submodule(name).lora_A.weight, their_layer.lora_A["default"].weight)
            assert torch.equal(ours.get_submodule(name).lora_B.weight, their_layer.lora_B["default"].weight)


def test_merge_all_matches_merge_and_unload(solution, twins):
    ours, theirs, x, _ = twins
    merged_by_us = solution["merge_all"](ours)
    merged_by_peft = theirs.merge_and_unload()
    assert merged_by_us.state_dict().keys() == merged_by_peft.state_dict().keys()
    for key, value in merged_by_us.state_dict().items():
        assert torch.equal(value, merged_by_peft.state_dict()[key]), key
    with torch.no_grad():
        assert _max_difference(merged_by_us(x), merged_by_peft(x)) == 0.0
