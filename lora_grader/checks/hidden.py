"""The hidden cases of every check: the same requirements as the visible cases, with other numbers,
shapes and seeds. Each function receives its check module's own case builders and returns that
module's hidden cases by name.

Only the instructor's install holds this file: the student bundle's wheel (`lora-bundle`) is built
without it, and there a check's hidden cases are None (see core.hidden_cases_of).
"""


def layer(layer_cases, large_cases):
    return {
        "layer": layer_cases(
            [(10, 14, 3, 1, (2, 2, 3, 10)), (20, 8, 5, 8, (7, 20)), (9, 9, 2, 5, (4, 9))], seeds=(120, 130, 140)
        ),
        "flops": layer_cases([(448, 320, 2, 1, (4, 448)), (320, 448, 3, 2, (1, 3, 320))], seeds=(170, 180))
        + large_cases([(180_000, 240_000, 3, 2, (1, 2, 180_000))], seeds=(200,)),
    }


def nb01(cases, large_cases):
    return {
        "silent_failure_case": ({"seed": 1},),
        "update": cases(
            [(20, 12, 5, (7, 20)), (10, 10, 1, (3, 4, 10)), (6, 30, 2, (1, 2, 2, 6))],
            seeds=(30, 40, 50), scalings=(0.25, 3.0, 0.5),
        ),
        "flops": cases([(448, 320, 2, (2, 1, 448)), (320, 448, 3, (4, 320))], seeds=(70, 75), scalings=(2.0, 0.25))
        + large_cases([(240_000, 160_000, 2, (1, 2, 240_000))], seeds=(85,), scalings=(1.25,)),
    }


def nb02(flop_cases):
    return {
        "factored": flop_cases(False, [(3, 7, 5, 1), (512, 768, 3072, 16)]),
        "materialized": flop_cases(True, [(3, 7, 5, 1), (512, 768, 3072, 16)]),
    }


def nb03(layer_cases, nb03):
    """nb03 is the check module: its case builder and the modules its cases name."""
    modules = {
        "nn.Linear(20, 3)": lambda: nb03.nn.Linear(20, 3),
        "nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 4)) with the first Linear frozen":
            lambda: nb03._partly_frozen_sequential(7, 9, 4),
        "a module holding a frozen nn.Linear(12, 20) and trainable nn.Linear(12, 3, bias=False), "
        "nn.Linear(3, 20, bias=False)": lambda: nb03._FrozenBaseWithAdapter(12, 20, 3),
        "nn.Sequential(nn.Tanh()), which has no parameters": lambda: nb03.nn.Sequential(nb03.nn.Tanh()),
        "nn.Sequential(nn.Linear(6, 11), nn.BatchNorm1d(11)); BatchNorm also holds buffers":
            lambda: nb03.nn.Sequential(nb03.nn.Linear(6, 11), nb03.nn.BatchNorm1d(11)),
        "nn.Linear(9, 8) with only its bias frozen": lambda: nb03._bias_frozen_linear(9, 8),
        "a module with a frozen nn.Parameter of 6 numbers and an nn.Linear(6, 5)": lambda: nb03._FrozenGate(6, 5),
        "a fully frozen nn.Linear(3, 13)": lambda: nb03.nn.Linear(3, 13).requires_grad_(False),
    }
    shared = {
        "nn.Embedding(11, 6) and nn.Linear(6, 11) sharing one (11, 6) weight": lambda: nb03._TiedEmbedding(11, 6),
        "nn.Sequential(linear, nn.Tanh(), linear) with one nn.Linear(5, 5) used twice":
            lambda: nb03._one_linear_twice(5),
        "nn.Embedding(9, 5) and nn.Linear(5, 9) sharing one frozen (9, 5) weight":
            lambda: nb03._TiedEmbedding(9, 5, freeze_shared=True),
    }
    return {
        "layer": layer_cases(
            [(10, 14, 3, 2, (2, 2, 3, 10)), (20, 8, 5, 8, (7, 20)), (9, 15, 2, 5, (4, 9))], seeds=(320, 330, 340)
        ),
        "modules": modules | shared,
        "count": nb03._count_cases(*modules),
        "shared": nb03._count_cases(*shared),
        "prediction": layer_cases([(7, 13, 2, 1, (2, 3, 7))], seeds=(410,)),
    }


def nb04(layer_cases):
    return {
        "layer": layer_cases(
            [(16, 6, 2, 3, (2, 3, 16)), (10, 10, 3, 1, (2, 2, 3, 10)), (20, 8, 5, 8, (7, 20))],
            seeds=(420, 430, 440),
        ),
    }


def nb05(case, paper):
    return {
        "model": (
            case("mlp", (10, 18, 7, 13, 3), ("2", "4"), ("6",), 4, 2, (6, 10), 520),
            case("nested", (16, 8, 12, 6), ("body.fc1", "body.fc2"), ("head",), 2, 5, (4, 16), 530),
            case("mlp", (7, 11, 9), ("0",), (), 5, 3, (2, 7), 550),
        ),
        "paper": (
            paper(24, 1024, {"Wq": 4, "Wv": 4}),
            paper(12, 768, {"Wq": 16, "Wk": 8, "Wv": 4}),
            paper(32, 4096, {"Wq": 8, "Wk": 8, "Wv": 8, "Wo": 8}),
        ),
        "millions": tuple({"count": n} for n in (9_437_184, 1_049_999, 123_456_789, 999_999)),
    }
