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
        self.lora_A = {lora_A}
        self.lora_B = {lora_B}
        {freeze}

    def forward(self, x):
        return {forward}
'''
CORRECT = dict(
    scaling="alpha / rank",
    lora_A="nn.Parameter(torch.randn(in_features, rank))",
    lora_B="nn.Parameter(torch.zeros(rank, out_features))",
    freeze="self.base_layer.requires_grad_(False)",
    forward="self.base_layer(x) + (x @ self.lora_A) @ self.lora_B * self.scaling",
)


def lora_linear(prelude: str = "", **changes) -> dict:
    return {"lora_linear_answer": prelude + LORA_LINEAR.format(**{**CORRECT, **changes})}


def flops(body: str) -> dict:
    return {"lora_flops_answer": "def lora_flops(num_tokens, in_features, out_features, rank, materialize=False):\n"
                                 f"    {body}\n"}


ENTRIES = [
    bug("02-lora-A-transposed", "02", lora_linear(
        lora_A="nn.Parameter(torch.randn(rank, in_features))",
        forward="self.base_layer(x) + (x @ self.lora_A.T) @ self.lora_B * self.scaling",
    ), "lora_linear_parameters", "transposed convention"),
    # The challenge's Attempt #2 is right for notebook 03, which asks for nn.Linear adapters; this
    # notebook asks for (in, r) and (r, out) Parameters, and its feedback must say so.
    bug("02-seed-attempt-2", "02", lora_linear(
        lora_A="nn.Linear(in_features, self.rank, bias=False)",
        lora_B="nn.Linear(self.rank, out_features, bias=False)",
        freeze="self.base_layer.requires_grad_(False)\n"
               "        nn.init.normal_(self.lora_A.weight)\n"
               "        nn.init.zeros_(self.lora_B.weight)",
        forward="self.base_layer(x) + self.scaling * self.lora_B(self.lora_A(x))",
    ), "lora_linear_parameters", "should be an nn.Parameter of shape (in_features, rank), but it is a Linear"),
    bug("02-adapters-are-plain-tensors", "02", lora_linear(
        lora_A="torch.randn(in_features, rank, requires_grad=True)",
        lora_B="torch.zeros(rank, out_features, requires_grad=True)",
    ), "lora_linear_parameters", "not an nn.Parameter"),
    bug("02-B-random", "02", lora_linear(lora_B="nn.Parameter(torch.randn(rank, out_features))"),
        "lora_linear_init", "should start at exactly zero"),
    bug("02-A-zeros", "02", lora_linear(lora_A="nn.Parameter(torch.zeros(in_features, rank))"),
        "lora_linear_init", "all zeros"),
    bug("02-A-ones", "02", lora_linear(lora_A="nn.Parameter(torch.ones(in_features, rank))"),
        "lora_linear_init", "filled with one constant"),
    bug("02-seeded-inside-init", "02", lora_linear(
        lora_A="nn.Parameter(torch.randn(in_features, rank, generator=torch.Generator().manual_seed(0)))",
    ), "lora_linear_init", "identical in two new layers"),
    bug("02-seed-attempt-1", "02", lora_linear(
        forward="self.base_layer(x) + self.scaling * (self.lora_A @ self.lora_B) * x",
    ), "lora_linear_output_shape", "elementwise"),
    bug("02-flattens-leading-dimensions", "02", lora_linear(
        forward="self.base_layer(x).reshape(-1, out_features_of(self)) + "
                "(x.reshape(-1, x.shape[-1]) @ self.lora_A) @ self.lora_B * self.scaling",
        prelude="def out_features_of(layer):\n    return layer.base_layer.out_features\n\n",
    ), "lora_linear_output_shape", "output shape"),
    bug("02-forgets-the-base", "02", lora_linear(forward="(x @ self.lora_A) @ self.lora_B * self.scaling"),
        "lora_linear_identity_at_init", "should equal the base layer"),
    bug("02-alpha-not-divided-by-rank", "02", lora_linear(scaling="alpha"),
        "lora_linear_values", "alpha instead of alpha / rank"),
    bug("02-rank-over-alpha", "02", lora_linear(scaling="rank / alpha"),
        "lora_linear_values", "rank / alpha instead of alpha / rank"),
    bug("02-forward-ignores-scaling", "02", lora_linear(
        forward="self.base_layer(x) + (x @ self.lora_A) @ self.lora_B"),
        "lora_linear_values", "no scaling at all"),
    bug("02-requires-grad-attribute-on-module", "02", lora_linear(freeze="self.base_layer.requires_grad = False"),
        "lora_linear_base_frozen", "only sets an attribute"),
    bug("02-freezes-only-the-weight", "02", lora_linear(freeze="self.base_layer.weight.requires_grad = False"),
        "lora_linear_base_frozen", "base_layer.bias still requires grad"),
    bug("02-no-freezing", "02", lora_linear(freeze="pass"),
        "lora_linear_base_frozen", "still requires grad"),
    bug("02-adapter-under-no-grad", "02", lora_linear(
        forward="self.base_layer(x) + self.lora_term(x)",
        freeze="self.base_layer.requires_grad_(False)\n\n"
               "    @torch.no_grad()\n"
               "    def lora_term(self, x):\n"
               "        return (x @ self.lora_A) @ self.lora_B * self.scaling",
    ), "lora_linear_trainable", "received no gradient"),
    bug("02-materialized-forward", "02", lora_linear(
        forward="self.base_layer(x) + x @ (self.lora_A @ self.lora_B) * self.scaling",
    ), "lora_linear_flops", "is A @ B formed"),
    bug("02-forward-forms-AB-with-outer-products", "02", lora_linear(
        forward="self.base_layer(x) + self.scaling * (x.unsqueeze(-1) * sum("
                "torch.outer(self.lora_A[:, i], self.lora_B[i]) for i in range(self.rank))).sum(-2)",
    ), "lora_linear_flops", "is A @ B formed"),
    # A @ B formed with torch's dispatch modes off, out of sight of the FLOP counter and of the
    # allocation tracker: the large case, where A @ B does not fit in memory, catches it.
    bug("02-forward-forms-AB-with-the-modes-off", "02", lora_linear(
        prelude="from torch.utils._python_dispatch import _disable_current_modes\n",
        forward="self.base_layer(x) + self.lora_term(x)",
        freeze="self.base_layer.requires_grad_(False)\n\n"
               "    def lora_term(self, x):\n"
               "        with _disable_current_modes(), torch._C._DisableTorchDispatch():\n"
               "            return x @ (self.lora_A @ self.lora_B) * self.scaling",
    ), "lora_linear_flops", "out of the flop counter's sight", fails_only=("lora_linear_flops",)),
    # Stored the other way round, (r, in) and (out, r), and used consistently: one mistake, one check.
    bug("02-adapters-stored-transposed", "02", lora_linear(
        lora_A="nn.Parameter(torch.randn(rank, in_features))",
        lora_B="nn.Parameter(torch.zeros(out_features, rank))",
        forward="self.base_layer(x) + (x @ self.lora_A.T) @ self.lora_B.T * self.scaling",
    ), "lora_linear_parameters", "transposed convention", fails_only=("lora_linear_parameters",)),
    bug("02-calls-the-parameters", "02", lora_linear(
        forward="self.base_layer(x) + self.lora_B(self.lora_A(x)) * self.scaling",
    ), "lora_linear_output_shape", "tensors rather than layers"),
    bug("02-frozen-by-a-parameter-that-lies", "02", lora_linear(
        prelude="class FrozenLooking(nn.Parameter):\n    requires_grad = property(lambda self: False)\n\n",
        freeze="self.base_layer.weight = FrozenLooking(self.base_layer.weight.data)\n"
               "        self.base_layer.bias = FrozenLooking(self.base_layer.bias.data)",
    ), "lora_linear_base_frozen", "still requires grad"),
    bug("02-flops-materialized-forgets-A-times-B", "02",
        flops("if materialize:\n        return 2 * num_tokens * in_features * out_features\n"
              "    return 2 * num_tokens * rank * (in_features + out_features)"),
        "lora_flops_materialized", "forming A @ B"),
    bug("02-flops-multiply-adds", "02",
        flops("if materialize:\n        return in_features * rank * out_features + num_tokens * in_features * out_features\n"
              "    return num_tokens * rank * (in_features + out_features)"),
        "lora_flops_factored", "2 flops for each"),
    bug("02-flops-as-float", "02",
        flops("if materialize:\n        return 2.0 * in_features * rank * out_features + 2.0 * num_tokens * in_features * out_features\n"
              "    return 2.0 * num_tokens * rank * (in_features + out_features)"),
        "lora_flops_factored", "should return an int"),
    bug("02-flops-orders-swapped", "02",
        flops("if not materialize:\n        return 2 * in_features * rank * out_features + 2 * num_tokens * in_features * out_features\n"
              "    return 2 * num_tokens * rank * (in_features + out_features)"),
        "lora_flops_factored", "the materialized order"),
    bug("02-flops-forget-the-product-with-x", "02",
        flops("if materialize:\n        return 2 * in_features * rank * out_features\n"
              "    return 2 * num_tokens * rank * (in_features + out_features)"),
        "lora_flops_materialized", "only A @ B"),
    variant("02-f-linear", "02", lora_linear(
        prelude="import torch.nn.functional as F\n",
        forward="F.linear(x, self.base_layer.weight, self.base_layer.bias) "
                "+ F.linear(F.linear(x, self.lora_A.T), self.lora_B.T) * self.scaling",
    )),
    variant("02-freeze-by-loop", "02", lora_linear(
        freeze="for p in self.base_layer.parameters():\n            p.requires_grad = False",
    )),
    variant("02-kaiming-uniform-A", "02", lora_linear(
        prelude="import math\n",
        lora_A="nn.Parameter(nn.init.kaiming_uniform_(torch.empty(in_features, rank), a=math.sqrt(5)))",
    )),
    variant("02-einsum-and-scaling-between", "02", lora_linear(
        forward='self.base_layer(x) + torch.einsum("...r,ro->...o", '
                'torch.einsum("...i,ir->...r", x, self.lora_A) * self.scaling, self.lora_B)',
    )),
    variant("02-warns-and-has-helpers", "02", lora_linear(
        prelude="import warnings\nwarnings.simplefilter('always', UserWarning)\n",
        forward="self.base_layer(x) + self.delta(x)",
        freeze="self.base_layer.requires_grad_(False)\n        self.note = 'adapters on'\n\n"
               "    def delta(self, x):\n"
               "        warnings.warn('LoRA branch in use')  # a correct answer that writes to stderr\n"
               "        return (x @ self.lora_A) @ self.lora_B * self.scaling",
    ), extra_cells=(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\nprint('scratch work')",
    )),
    variant("02-flops-by-counting-products", "02",
            flops("def product(m, n, p):\n        return 2 * m * n * p\n"
                  "    if materialize:\n"
                  "        return product(in_features, rank, out_features) + product(num_tokens, in_features, out_features)\n"
                  "    return product(num_tokens, in_features, rank) + product(num_tokens, rank, out_features)")),
]
