"""Notebook 03: LoRALinear with nn.Linear adapters, count_trainable_parameters, gradient_prediction."""
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
        {init_A}
        {init_B}

    def forward(self, x):
        {forward}
'''

ATTEMPT_2 = {
    "scaling": "alpha / rank",
    "lora_A": "nn.Linear(in_features, self.rank, bias=False)",
    "lora_B": "nn.Linear(self.rank, out_features, bias=False)",
    "freeze": "self.base_layer.requires_grad_(False)",
    "init_A": "nn.init.normal_(self.lora_A.weight)",
    "init_B": "nn.init.zeros_(self.lora_B.weight)",
    "forward": "return self.base_layer(x) + self.scaling * self.lora_B(self.lora_A(x))",
}


def lora_linear(methods="", **changes):
    """Attempt #2 from the challenge, with the named lines changed and `methods` added."""
    return {"lora_linear_answer": LORA_LINEAR.format(**{**ATTEMPT_2, **changes}) + methods}


def count(body):
    return {"count_trainable_parameters_answer": "def count_trainable_parameters(module):\n" + body}


def prediction(**changes):
    answers = {"base_layer.weight": "none", "base_layer.bias": "none",
               "lora_A.weight": "zero", "lora_B.weight": "nonzero", **changes}
    return {"gradient_prediction_answer": f"def gradient_prediction():\n    return {answers!r}\n"}


ENTRIES = [
    # --- LoRALinear ---------------------------------------------------------------------------
    bug("03-adapters-with-bias", "03", lora_linear(
        lora_A="nn.Linear(in_features, self.rank)", lora_B="nn.Linear(self.rank, out_features)",
    ), "lora_linear_parameters", "lora_A has a bias"),
    bug("03-linear-arguments-swapped", "03", lora_linear(
        lora_A="nn.Linear(self.rank, in_features, bias=False)",
        lora_B="nn.Linear(out_features, self.rank, bias=False)",
    ), "lora_linear_parameters", "nn.Linear's arguments swapped"),
    bug("03-adapters-as-parameters", "03", lora_linear(
        lora_A="nn.Parameter(torch.randn(in_features, self.rank))",
        lora_B="nn.Parameter(torch.zeros(self.rank, out_features))",
        init_A="", init_B="",
        forward="return self.base_layer(x) + self.scaling * (x @ self.lora_A) @ self.lora_B",
    ), "lora_linear_parameters", "should be nn.Linear(in_features, rank, bias=False)"),
    bug("03-B-random", "03", lora_linear(init_B="nn.init.normal_(self.lora_B.weight)"),
        "lora_linear_init", "lora_B should start at exactly zero"),
    bug("03-B-left-at-default-init", "03", lora_linear(init_B=""),
        "lora_linear_init", "lora_B should start at exactly zero"),
    bug("03-inits-swapped", "03", lora_linear(
        init_A="nn.init.zeros_(self.lora_A.weight)", init_B="nn.init.normal_(self.lora_B.weight)",
    ), "lora_linear_init", "lora_A starts at zero and lora_B is random"),
    bug("03-adapters-applied-in-wrong-order", "03", lora_linear(
        forward="return self.base_layer(x) + self.scaling * self.lora_A(self.lora_B(x))",
    ), "lora_linear_output_shape", "are they applied in that order"),
    bug("03-A-zero", "03", lora_linear(init_A="nn.init.zeros_(self.lora_A.weight)"),
        "lora_linear_init", "lora_A is all zeros"),
    bug("03-A-ones", "03", lora_linear(init_A="nn.init.ones_(self.lora_A.weight)"),
        "lora_linear_init", "filled with one constant"),
    bug("03-A-fixed-seed", "03", lora_linear(
        init_A="torch.manual_seed(0); nn.init.normal_(self.lora_A.weight)",
    ), "lora_linear_init", "not a fixed pattern or a fixed seed"),
    bug("03-scaling-alpha", "03", lora_linear(scaling="alpha"),
        "lora_linear_values", "alpha instead of alpha / rank"),
    bug("03-no-scaling-in-forward", "03", lora_linear(
        forward="return self.base_layer(x) + self.lora_B(self.lora_A(x))",
    ), "lora_linear_values", "no scaling at all"),
    bug("03-requires-grad-attribute", "03", lora_linear(freeze="self.base_layer.requires_grad = False"),
        "lora_linear_base_frozen", "only sets an attribute"),
    bug("03-freeze-weight-only", "03", lora_linear(freeze="self.base_layer.weight.requires_grad_(False)"),
        "lora_linear_base_frozen", "freezing the weight alone leaves the bias training"),
    # Lies about freezing: the grader reads nn.Module's own tables and torch's own flags.
    bug("03-hides-the-base-from-named-parameters", "03", lora_linear(freeze="", methods='''
    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        for name, p in super().named_parameters(prefix, recurse, remove_duplicate):
            if not name.startswith("base_layer"):
                yield name, p

    def parameters(self, recurse=True):
        for _, p in self.named_parameters():
            yield p
'''), "lora_linear_base_frozen", "base_layer.weight still requires grad"),
    bug("03-getattribute-hides-the-base", "03", lora_linear(freeze="", methods='''
    def __getattribute__(self, name):
        value = super().__getattribute__(name)
        if name == "_modules":  # what named_parameters() walks; forward finds base_layer anyway
            return {key: module for key, module in value.items() if key != "base_layer"}
        return value
'''), "lora_linear_base_frozen", "base_layer.weight still requires grad"),
    bug("03-base-kept-out-of-the-module", "03", lora_linear(
        freeze="object.__setattr__(self, 'base_layer', self._modules.pop('base_layer'))  # unregistered, unfrozen",
    ), "lora_linear_base_frozen", "received a gradient in backward"),
    bug("03-freeze-whole-module", "03", lora_linear(freeze="self.requires_grad_(False)"),
        "lora_linear_trainable", "lora_A does not require grad"),
    bug("03-lora-branch-detached", "03", lora_linear(
        forward="return self.base_layer(x) + self.scaling * self.lora_B(self.lora_A(x)).detach()",
    ), "lora_linear_trainable", "not detached"),
    bug("03-lora-branch-under-no-grad", "03", lora_linear(forward="""with torch.no_grad():
            update = self.lora_B(self.lora_A(x))
        return self.base_layer(x) + self.scaling * update"""),
        "lora_linear_trainable", "computed under torch.no_grad()"),
    bug("03-merged-weight-forward", "03", lora_linear(
        forward="return self.base_layer(x) + self.scaling * x @ (self.lora_B.weight @ self.lora_A.weight).T",
    ), "lora_linear_flops", "is A @ B formed"),
    bug("03-forward-forms-AB-by-broadcasting", "03", lora_linear(forward=(
        "delta = (self.lora_B.weight[:, :, None] * self.lora_A.weight[None]).sum(1)\n"
        "        return self.base_layer(x) + self.scaling * (x.unsqueeze(-2) * delta).sum(-1)"
    )), "lora_linear_flops", "is A @ B formed"),
    bug("03-forward-forms-AB-with-einsum", "03", lora_linear(forward=(
        'delta = torch.einsum("or,ri->oi", self.lora_B.weight, self.lora_A.weight)\n'
        '        return self.base_layer(x) + self.scaling * torch.einsum("...i,oi->...o", x, delta)'
    )), "lora_linear_flops", "is A @ B formed"),
    # The update B @ A formed with torch's dispatch modes off: only the large case catches it.
    bug("03-merged-weight-with-the-modes-off", "03", lora_linear(forward=(
        "with torch.utils._python_dispatch._disable_current_modes():\n"
        "            term = x @ (self.lora_B.weight @ self.lora_A.weight).T\n"
        "        return self.base_layer(x) + self.scaling * term"
    )), "lora_linear_flops", "out of the flop counter's sight", fails_only=("lora_linear_flops",)),
    variant("03-seed-attempt-2-verbatim", "03", lora_linear()),
    variant("03-kaiming-uniform-A", "03", lora_linear(
        init_A="nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))",
    )),
    variant("03-peft-gaussian-A", "03", lora_linear(init_A="nn.init.normal_(self.lora_A.weight, std=1 / self.rank)")),
    variant("03-A-left-at-nn-linear-default", "03", lora_linear(init_A="")),
    variant("03-freeze-by-loop", "03", lora_linear(
        freeze="for p in self.base_layer.parameters():\n            p.requires_grad = False",
    )),
    variant("03-f-linear-with-weights", "03", {"lora_linear_answer": "import torch.nn.functional as F\n"
                                               + lora_linear(forward=(
        "base = F.linear(x, self.base_layer.weight, self.base_layer.bias)\n"
        "        return base + F.linear(F.linear(x, self.lora_A.weight), self.lora_B.weight) * self.scaling"
    ))["lora_linear_answer"]}),
    variant("03-einsum", "03", lora_linear(forward=(
        'down = torch.einsum("...i,ri->...r", x, self.lora_A.weight)\n'
        '        return self.base_layer(x) + self.scaling * torch.einsum("...r,or->...o", down, self.lora_B.weight)'
    ))),
    variant("03-transposed-matmuls", "03", lora_linear(
        forward="return self.base_layer(x) + (x @ self.lora_A.weight.T) @ self.lora_B.weight.T * self.scaling",
    )),
    variant("03-scaling-before-A", "03", lora_linear(
        forward="return self.base_layer(x) + self.lora_B(self.lora_A(x * self.scaling))",
    )),
    variant("03-freeze-first-and-extras", "03", {"lora_linear_answer": '''
class LoRALinear(nn.Module):
    """Attempt #2 with the frozen base set up first, and a few helpers of its own."""

    def __init__(self, base_layer, rank=4, alpha=1):
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.dropout = nn.Identity()
        self.merged = False
        self.lora_A = nn.Linear(base_layer.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base_layer.out_features, bias=False)
        self.reset_lora_parameters()

    def reset_lora_parameters(self):
        nn.init.normal_(self.lora_A.weight)
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self):
        return self.scaling * self.lora_B.weight @ self.lora_A.weight

    def extra_repr(self):
        return f"rank={self.rank}, alpha={self.alpha}"

    def forward(self, x):
        update = self.lora_B(self.lora_A(self.dropout(x)))
        return self.base_layer(x) + update * self.scaling
'''}, extra_cells=("print(LoRALinear(nn.Linear(6, 4), rank=2, alpha=3))",)),

    # --- count_trainable_parameters ----------------------------------------------------------
    bug("03-count-all-parameters", "03", count("    return sum(p.numel() for p in module.parameters())"),
        "count_trainable_parameters", "frozen parameters were counted too"),
    bug("03-count-state-dict", "03", count("    return sum(t.numel() for t in module.state_dict().values())"),
        "count_trainable_parameters", "frozen parameters were counted too"),
    bug("03-count-tensors", "03", count("    return len([p for p in module.parameters() if p.requires_grad])"),
        "count_trainable_parameters", "not of numbers"),
    bug("03-count-in-millions", "03", count(
        "    return sum(p.numel() for p in module.parameters() if p.requires_grad) / 1e6"),
        "count_trainable_parameters", "returned a float"),
    bug("03-count-returns-tensor", "03", count(
        "    return torch.tensor([p.numel() for p in module.parameters() if p.requires_grad]).sum()"),
        "count_trainable_parameters", "should return a Python int"),
    bug("03-count-buffers-too", "03", count(
        "    return sum(p.numel() for p in module.parameters() if p.requires_grad) + "
        "sum(b.numel() for b in module.buffers())"),
        "count_trainable_parameters", "buffers"),
    bug("03-count-shared-twice", "03", count("""    total = 0
    for submodule in module.modules():
        for p in submodule.parameters(recurse=False):
            if p.requires_grad:
                total += p.numel()
    return total"""), "count_trainable_shared", "counted twice"),
    # Right on every module but one whose shared weight is frozen: only that visible case shows it.
    bug("03-count-subtracts-frozen-duplicates", "03", count("""    every = [p for _, p in module.named_parameters(remove_duplicate=False)]
    total = sum(p.numel() for p in every if p.requires_grad)
    ids = [id(p) for p in every]
    return total - sum(p.numel() * (ids.count(id(p)) - 1) for p in {id(p): p for p in every}.values())"""),
        "count_trainable_shared", "how many times it includes each"),
    variant("03-count-dedup-named-parameters", "03", count("""    seen, total = set(), 0
    for _, p in module.named_parameters(remove_duplicate=False):
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total""")),
    variant("03-count-numpy", "03", count("""    import numpy as np
    return np.sum([p.numel() for p in module.parameters() if p.requires_grad], dtype=np.int64)""")),

    # --- gradient_prediction -----------------------------------------------------------------
    bug("03-predict-frozen-gets-zero", "03", prediction(**{"base_layer.weight": "zero", "base_layer.bias": "zero"}),
        "gradient_prediction_base", "a parameter that does not require grad"),
    bug("03-predict-bias-trains", "03", prediction(**{"base_layer.bias": "nonzero"}),
        "gradient_prediction_base", "frozen with the rest of the base layer"),
    bug("03-predict-A-nonzero", "03", prediction(**{"lora_A.weight": "nonzero"}),
        "gradient_prediction_lora", "which module does every path pass through"),
    bug("03-predict-A-none", "03", prediction(**{"lora_A.weight": "none"}),
        "gradient_prediction_lora", "follow the chain rule from the output back to lora_A"),
    bug("03-predict-B-zero", "03", prediction(**{"lora_A.weight": "nonzero", "lora_B.weight": "zero"}),
        "gradient_prediction_lora", "lora_B's gradient is built from its input"),
    bug("03-prediction-module-names", "03", {"gradient_prediction_answer": """
def gradient_prediction():
    return {"base_layer.weight": "none", "base_layer.bias": "none", "lora_A": "zero", "lora_B": "nonzero"}
"""}, "gradient_prediction_base", "no answer for lora_A.weight, lora_B.weight"),
    bug("03-prediction-booleans", "03", prediction(**{"lora_A.weight": False, "lora_B.weight": True}),
        "gradient_prediction_base", "answer with one of the strings"),
    variant("03-prediction-spelled-differently", "03", prediction(**{
        "base_layer.weight": None, "base_layer.bias": "None", "lora_A.weight": " Zero", "lora_B.weight": "non-zero",
    })),
]
