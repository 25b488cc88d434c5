"""Notebook 01: silent_failure_case and lora_update."""
from catalogue import bug, variant


def update(body: str) -> dict:
    return {"lora_update_answer": f"def lora_update(x, lora_A, lora_B, scaling):\n    {body}\n"}


def silent_case(body: str) -> dict:
    return {"silent_failure_case_answer": f"def silent_failure_case():\n    {body}\n"}


ENTRIES = [
    bug("01-silent-case-that-crashes", "01",
        silent_case("return dict(in_features=8, out_features=8, rank=2, x_shape=(5, 8))"),
        "silent_failure_case", "raised an exception"),
    bug("01-silent-case-that-is-right", "01",
        silent_case("return dict(in_features=1, out_features=1, rank=1, x_shape=(4, 1))"),
        "silent_failure_case", "gave the right answer"),
    bug("01-silent-case-x-not-an-input", "01",
        silent_case("return dict(in_features=8, out_features=8, rank=2, x_shape=(8, 4))"),
        "silent_failure_case", "last dimension of x must be in_features"),
    bug("01-silent-case-as-a-tuple", "01",
        silent_case("return (8, 8, 2, (2, 8, 8))"),
        "silent_failure_case", "should return a dict"),
    bug("01-attempt-1-elementwise-update", "01", update("return scaling * (lora_A @ lora_B) * x"),
        "lora_update_shape", "`*` is elementwise"),
    bug("01-forgets-B", "01", update("return (x @ lora_A) * scaling"),
        "lora_update_shape", "the last dimension is the rank"),
    bug("01-flattens-leading-dimensions", "01",
        update("return (x.reshape(-1, x.shape[-1]) @ lora_A) @ lora_B * scaling"),
        "lora_update_shape", "leading dimensions of x were lost"),
    bug("01-torch-mm-only-takes-matrices", "01",
        update("return torch.mm(torch.mm(x, lora_A), lora_B) * scaling"),
        "lora_update_shape", "torch.mm only takes 2-D"),
    bug("01-calls-the-tensors", "01", update("return lora_B(lora_A(x)) * scaling"),
        "lora_update_shape", "tensors, not layers"),
    bug("01-returns-numpy", "01", update("return ((x @ lora_A) @ lora_B * scaling).numpy()"),
        "lora_update_shape", "should be a tensor"),
    bug("01-no-scaling", "01", update("return (x @ lora_A) @ lora_B"),
        "lora_update_values", "was scaling never applied"),
    bug("01-scaling-twice", "01", update("return (x @ lora_A * scaling) @ lora_B * scaling"),
        "lora_update_values", "applied twice"),
    bug("01-materialized-update", "01", update("return x @ (lora_A @ lora_B) * scaling"),
        "lora_update_never_forms_AB", "did you form A @ B"),
    bug("01-materialized-einsum", "01",
        update('return torch.einsum("...i,io->...o", x, lora_A @ lora_B) * scaling'),
        "lora_update_never_forms_AB", "did you form A @ B"),
    # A @ B formed where FlopCounterMode counts nothing: the size of what was allocated shows it.
    bug("01-materialized-broadcast-and-sum", "01",
        update("AB = (lora_A[:, :, None] * lora_B[None]).sum(1)\n"
               "    return (x[..., :, None] * AB).sum(-2) * scaling"),
        "lora_update_never_forms_AB", "did you form A @ B"),
    bug("01-materialized-einsum-then-sum", "01",
        update('AB = torch.einsum("ir,ro->io", lora_A, lora_B)\n'
               "    return (x.unsqueeze(-1) * AB).sum(-2) * scaling"),
        "lora_update_never_forms_AB", "did you form A @ B"),
    bug("01-materialized-sum-of-outers", "01",
        update("AB = sum(torch.outer(lora_A[:, i], lora_B[i]) for i in range(lora_A.shape[1]))\n"
               "    return torch.stack([row @ AB for row in x.reshape(-1, x.shape[-1])]).reshape("
               "*x.shape[:-1], -1) * scaling"),
        "lora_update_never_forms_AB", "did you form A @ B"),
    bug("01-materialized-addr-loop", "01",
        update("AB = torch.zeros(lora_A.shape[0], lora_B.shape[1])\n"
               "    for i in range(lora_A.shape[1]):\n"
               "        AB.addr_(lora_A[:, i], lora_B[i])\n"
               "    return (x.unsqueeze(-1) * AB).sum(-2) * scaling"),
        "lora_update_never_forms_AB", "did you form A @ B"),
    bug("01-materialized-mm-on-flattened-x", "01",
        update("flat = x.reshape(-1, x.shape[-1])\n"
               "    return torch.mm(flat, torch.mm(lora_A, lora_B)).reshape(*x.shape[:-1], -1) * scaling"),
        "lora_update_never_forms_AB", "did you form A @ B"),
    # torch.mm where x is a matrix, A @ B otherwise: the visible cases have both kinds of x.
    bug("01-materialized-only-for-batched-x", "01",
        update("if x.dim() == 2:\n        return torch.mm(torch.mm(x, lora_A), lora_B) * scaling\n"
               "    return x @ (lora_A @ lora_B) * scaling"),
        "lora_update_never_forms_AB", "did you form A @ B"),
    # A @ B formed with torch's dispatch modes off, out of sight of the FLOP counter and of the
    # allocation tracker: the large case, where A @ B does not fit in memory, catches it.
    bug("01-materialized-with-the-modes-off", "01",
        update("from torch.utils._python_dispatch import _disable_current_modes\n"
               "    with _disable_current_modes():\n"
               "        return x @ (lora_A @ lora_B) * scaling"),
        "lora_update_never_forms_AB", "out of the flop counter's sight"),
    bug("01-materialized-with-python-dispatch-off", "01",
        update("with torch._C._DisableTorchDispatch():\n"
               "        return x @ (lora_A @ lora_B) * scaling"),
        "lora_update_never_forms_AB", "out of the flop counter's sight"),
    variant("01-broadcast-and-sum-factored", "01",
            update("h = (x.unsqueeze(-1) * lora_A).sum(-2)\n"
                   "    return (h.unsqueeze(-1) * lora_B).sum(-2) * scaling")),
    variant("01-mm-on-flattened-x", "01",
            update("flat = x.reshape(-1, x.shape[-1])\n"
                   "    return torch.mm(torch.mm(flat, lora_A), lora_B).reshape(*x.shape[:-1], -1) * scaling")),
    variant("01-einsum-update", "01",
            update('return torch.einsum("...i,ir,ro->...o", x, lora_A, lora_B) * scaling')),
    variant("01-scaling-first", "01", update("return ((scaling * x) @ lora_A) @ lora_B")),
    variant("01-matmul-and-a-print", "01",
            update("h = torch.matmul(x, lora_A)\n    print('h has shape', h.shape)\n"
                   "    return torch.matmul(h, lora_B).mul(scaling)")),
    # in_features=1 would not do: then (x @ A) @ B equals x * (A @ B) exactly.
    variant("01-silent-case-with-one-output", "01",
            silent_case("return {'in_features': 6, 'out_features': 1, 'rank': 3, 'x_shape': [1, 6]}")),
    variant("01-silent-case-4d", "01",
            silent_case("return dict(in_features=4, out_features=4, rank=1, x_shape=(3, 2, 4, 4))")),
]
