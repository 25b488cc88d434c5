"""Notebook 02: LoRALinear with nn.Parameter adapters, and lora_flops."""
from catalogue import bug, variant

LORA_LINEAR = '''
class LoRALinear(nn.Module):
    def __init__(self, base_layer, rank=4, alpha=1):
        super().__init__()
        self.base_layer = base_layer
        self.rank = rank
        self.alpha = alpha
        self.scaling = {scaling}
        in_features = base_layer.in_features
        out_features = base_layer.out_features
        self.lora_A = nn.Parameter(torch.randn(in_features, rank))
        self.lora_B = nn.Parameter(torch.zeros(rank, out_features))
        {freeze}

    def forward(self, x):
        return {forward}
'''


def lora_linear(scaling="alpha / rank", freeze="self.base_layer.requires_grad_(False)",
                forward="self.base_layer(x) + (x @ self.lora_A) @ self.lora_B * self.scaling"):
    return {"lora_linear_answer": LORA_LINEAR.format(scaling=scaling, freeze=freeze, forward=forward)}


ENTRIES = [
    bug("02-seed-attempt-1", "02", lora_linear(
        forward="self.base_layer(x) + self.scaling * (self.lora_A @ self.lora_B) * x",
    ), "lora_linear_output_shape", "elementwise"),
    bug("02-alpha-not-divided-by-rank", "02", lora_linear(scaling="alpha"),
        "lora_linear_values", "alpha instead of alpha / rank"),
    bug("02-requires-grad-attribute-on-module", "02", lora_linear(freeze="self.base_layer.requires_grad = False"),
        "lora_linear_base_frozen", "only sets an attribute"),
    bug("02-materialized-forward", "02", lora_linear(
        forward="self.base_layer(x) + x @ (self.lora_A @ self.lora_B) * self.scaling",
    ), "lora_linear_flops", "matrix formed"),
    bug("02-flops-multiply-adds", "02", {"lora_flops_answer": """
def lora_flops(num_tokens, in_features, out_features, rank, materialize=False):
    if materialize:
        return in_features * rank * out_features + num_tokens * in_features * out_features
    return num_tokens * rank * (in_features + out_features)
"""}, "lora_flops_factored", "2 flops for each"),
    variant("02-f-linear", "02", {"lora_linear_answer": "import torch.nn.functional as F\n" + lora_linear(
        forward="F.linear(x, self.base_layer.weight, self.base_layer.bias) "
                "+ F.linear(F.linear(x, self.lora_A.T), self.lora_B.T) * self.scaling",
    )["lora_linear_answer"]}),
    variant("02-freeze-by-loop", "02", lora_linear(
        freeze="for p in self.base_layer.parameters(): p.requires_grad = False",
    )),
]
