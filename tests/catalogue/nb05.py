"""Notebook 05: add_lora, count_parameters, adapter_state_dict, load_adapter, merge_all and the
paper's table. A submission is the solution with one function swapped for the version below."""
import textwrap

from catalogue import bug, variant


def answer(task, source):
    return {f"{task}_answer": textwrap.dedent(source)}


ADD_LORA = '''
def add_lora(model, targets, rank=4, alpha=8, trainable=()):
    model.requires_grad_(False)
    for name in targets:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child_name, {wrap})
    for name in trainable:
        model.get_submodule(name).requires_grad_(True)
    return model
'''


def add_lora(wrap="LoRALinear(getattr(parent, child_name), rank=rank, alpha=alpha)"):
    return answer("add_lora", ADD_LORA.format(wrap=wrap))


# add_lora with add_module, which replaces the child of that name in place.
ADD_LORA_BY_ADD_MODULE = '''
def add_lora(model, targets, rank=4, alpha=8, trainable=()):
    for p in model.parameters():
        p.requires_grad_(False)
    for name in targets:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        parent.add_module(child_name, LoRALinear(parent.get_submodule(child_name), rank=rank, alpha=alpha))
    for name in trainable:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
    return model
'''


ENTRIES = [
    # --- add_lora --------------------------------------------------------------------------------
    bug("05-add-lora-returns-nothing", "05", answer("add_lora", '''
        def add_lora(model, targets, rank=4, alpha=8, trainable=()):
            model.requires_grad_(False)
            for name in targets:
                parent_name, _, child_name = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                setattr(parent, child_name, LoRALinear(getattr(parent, child_name), rank=rank, alpha=alpha))
            for name in trainable:
                model.get_submodule(name).requires_grad_(True)
    '''), "add_lora_wraps_targets", "add_lora returned None"),
    bug("05-add-lora-setattr-dotted-name-on-the-model", "05", answer("add_lora", '''
        def add_lora(model, targets, rank=4, alpha=8, trainable=()):
            model.requires_grad_(False)
            for name in targets:
                setattr(model, name, LoRALinear(model.get_submodule(name), rank=rank, alpha=alpha))
            for name in trainable:
                model.get_submodule(name).requires_grad_(True)
            return model
    '''), "add_lora_wraps_targets", "is a path through the model"),
    bug("05-add-lora-rank-and-alpha-swapped", "05",
        add_lora("LoRALinear(getattr(parent, child_name), alpha, rank)"),
        "add_lora_wraps_targets", "right order"),
    bug("05-add-lora-wraps-a-new-linear", "05",
        add_lora("LoRALinear(nn.Linear(getattr(parent, child_name).in_features, "
                 "getattr(parent, child_name).out_features), rank=rank, alpha=alpha)"),
        "add_lora_wraps_targets", "not a new one"),
    bug("05-add-lora-wraps-every-linear", "05", answer("add_lora", '''
        def add_lora(model, targets, rank=4, alpha=8, trainable=()):
            model.requires_grad_(False)
            for name, module in list(model.named_modules()):
                if isinstance(module, nn.Linear) and name not in trainable:
                    parent_name, _, child_name = name.rpartition(".")
                    setattr(model.get_submodule(parent_name), child_name, LoRALinear(module, rank=rank, alpha=alpha))
            for name in trainable:
                model.get_submodule(name).requires_grad_(True)
            return model
    '''), "add_lora_wraps_targets", "also wrapped"),
    bug("05-add-lora-random-lora-B", "05", answer("add_lora", '''
        def add_lora(model, targets, rank=4, alpha=8, trainable=()):
            model.requires_grad_(False)
            for name in targets:
                parent_name, _, child_name = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                layer = LoRALinear(getattr(parent, child_name), rank=rank, alpha=alpha)
                nn.init.normal_(layer.lora_B.weight, std=0.01)  # "so that both factors start training"
                setattr(parent, child_name, layer)
            for name in trainable:
                model.get_submodule(name).requires_grad_(True)
            return model
    '''), "add_lora_starts_as_base", "bit for bit"),
    bug("05-add-lora-forgets-to-freeze", "05", answer("add_lora", '''
        def add_lora(model, targets, rank=4, alpha=8, trainable=()):
            for name in targets:
                parent_name, _, child_name = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                setattr(parent, child_name, LoRALinear(getattr(parent, child_name), rank=rank, alpha=alpha))
            for name in trainable:
                model.get_submodule(name).requires_grad_(True)
            return model
    '''), "add_lora_trainable", "still train but should be frozen"),
    bug("05-add-lora-freezes-after-wrapping", "05", answer("add_lora", '''
        def add_lora(model, targets, rank=4, alpha=8, trainable=()):
            for name in targets:
                parent_name, _, child_name = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                setattr(parent, child_name, LoRALinear(getattr(parent, child_name), rank=rank, alpha=alpha))
            model.requires_grad_(False)
            for name in trainable:
                model.get_submodule(name).requires_grad_(True)
            return model
    '''), "add_lora_trainable", "the adapters must train"),
    bug("05-add-lora-ignores-trainable", "05", answer("add_lora", '''
        def add_lora(model, targets, rank=4, alpha=8, trainable=()):
            model.requires_grad_(False)
            for name in targets:
                parent_name, _, child_name = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                setattr(parent, child_name, LoRALinear(getattr(parent, child_name), rank=rank, alpha=alpha))
            return model
    '''), "add_lora_trainable", "must train in full"),
    bug("05-add-lora-module-flag-instead-of-freezing", "05", answer("add_lora", '''
        def add_lora(model, targets, rank=4, alpha=8, trainable=()):
            model.requires_grad = False
            for name in targets:
                parent_name, _, child_name = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                setattr(parent, child_name, LoRALinear(getattr(parent, child_name), rank=rank, alpha=alpha))
            for name in trainable:
                model.get_submodule(name).requires_grad_(True)
            return model
    '''), "add_lora_trainable", "freezes nothing"),
    bug("05-add-lora-returns-a-copy", "05", answer("add_lora", ADD_LORA_BY_ADD_MODULE.replace(
        "    for p in model.parameters():", "    model = copy.deepcopy(model)\n    for p in model.parameters():", 1)),
        "add_lora_wraps_targets", "in place", fails_only=("add_lora_wraps_targets",)),
    # --- count_parameters ------------------------------------------------------------------------
    bug("05-count-swapped", "05", answer("count_parameters", '''
        def count_parameters(model):
            parameters = list(model.parameters())
            return sum(p.numel() for p in parameters), sum(p.numel() for p in parameters if p.requires_grad)
    '''), "count_parameters", "swapped"),
    bug("05-count-shared-weight-twice", "05", answer("count_parameters", '''
        def count_parameters(model):
            parameters = [p for _, p in model.named_parameters(remove_duplicate=False)]
            return sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters)
    '''), "count_parameters", "count a shared parameter once"),
    bug("05-count-returns-a-dict", "05", answer("count_parameters", '''
        def count_parameters(model):
            return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                    "total": sum(p.numel() for p in model.parameters())}
    '''), "count_parameters", "should return a pair"),
    # --- adapter_state_dict ----------------------------------------------------------------------
    bug("05-checkpoint-is-the-whole-state-dict", "05", answer("adapter_state_dict", '''
        def adapter_state_dict(model):
            return model.state_dict()
    '''), "adapter_state_dict", "holds frozen weights"),
    bug("05-checkpoint-forgets-the-head", "05", answer("adapter_state_dict", '''
        def adapter_state_dict(model):
            return {name: value for name, value in model.state_dict().items() if "lora_" in name}
    '''), "adapter_state_dict", "missing: 4.bias, 4.weight"),
    bug("05-checkpoint-module-names", "05", answer("adapter_state_dict", '''
        def adapter_state_dict(model):
            state = {}
            for name, module in model.named_modules():
                if isinstance(module, LoRALinear):
                    state[name + ".A"] = module.lora_A.weight.detach().clone()
                    state[name + ".B"] = module.lora_B.weight.detach().clone()
            return state
    '''), "adapter_state_dict", "as model.state_dict() spells them"),
    # --- load_adapter ----------------------------------------------------------------------------
    bug("05-load-strict", "05", answer("load_adapter", '''
        def load_adapter(model, checkpoint):
            model.load_state_dict(checkpoint)
            return model
    '''), "load_adapter_round_trip", "raised RuntimeError"),
    bug("05-load-not-strict-and-unchecked", "05", answer("load_adapter", '''
        def load_adapter(model, checkpoint):
            model.load_state_dict(checkpoint, strict=False)
            return model
    '''), "load_adapter_rejects_mismatch", "strict=False"),
    bug("05-load-checks-only-unexpected-keys", "05", answer("load_adapter", '''
        def load_adapter(model, checkpoint):
            result = model.load_state_dict(checkpoint, strict=False)
            if result.unexpected_keys:
                raise KeyError(f"unexpected keys: {result.unexpected_keys}")
            return model
    '''), "load_adapter_rejects_mismatch", "a trainable key missing"),
    bug("05-load-always-raises", "05", answer("load_adapter", '''
        def load_adapter(model, checkpoint):
            raise ValueError("checkpoint does not match")
    '''), "load_adapter_round_trip", "raised ValueError"),
    bug("05-load-then-raises", "05", answer("load_adapter", '''
        def load_adapter(model, checkpoint):
            model.load_state_dict(checkpoint, strict=False)
            trainable = {name for name, p in model.named_parameters() if p.requires_grad}
            if set(checkpoint) != trainable:
                raise KeyError(f"the checkpoint does not fit: {sorted(set(checkpoint) ^ trainable)}")
            return model
    '''), "load_adapter_rejects_mismatch", "before loading anything", fails_only=("load_adapter_rejects_mismatch",)),
    bug("05-load-accepts-wrong-shape", "05", answer("load_adapter", '''
        def load_adapter(model, checkpoint):
            parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
            if checkpoint.keys() != parameters.keys():
                raise KeyError(f"the checkpoint does not fit: {sorted(checkpoint.keys() ^ parameters.keys())}")
            with torch.no_grad():
                for name, value in checkpoint.items():
                    parameters[name].copy_(value)
            return model
    '''), "load_adapter_rejects_mismatch", "wrong shape", fails_only=("load_adapter_rejects_mismatch",)),
    # --- merge_all -------------------------------------------------------------------------------
    bug("05-merge-keeps-the-lora-layers", "05", answer("merge_all", '''
        def merge_all(model):
            merged = copy.deepcopy(model)
            for module in merged.modules():
                if isinstance(module, LoRALinear):
                    with torch.no_grad():
                        module.base_layer.weight += module.scaling * module.lora_B.weight @ module.lora_A.weight
                        module.lora_B.weight.zero_()
            return merged
    '''), "merge_all_plain_model", "still holds lora parts"),
    bug("05-merge-without-scaling", "05", answer("merge_all", '''
        def merge_all(model):
            merged = copy.deepcopy(model)
            for name, module in list(merged.named_modules()):
                if isinstance(module, LoRALinear):
                    with torch.no_grad():
                        module.base_layer.weight += module.lora_B.weight @ module.lora_A.weight
                    parent_name, _, child_name = name.rpartition(".")
                    setattr(merged.get_submodule(parent_name), child_name, module.base_layer)
            return merged
    '''), "merge_all_outputs", "should be W + scaling"),
    bug("05-merge-new-linear-random-bias", "05", answer("merge_all", '''
        def merge_all(model):
            merged = copy.deepcopy(model)
            for name, module in list(merged.named_modules()):
                if isinstance(module, LoRALinear):
                    base = module.base_layer
                    plain = nn.Linear(base.in_features, base.out_features)
                    with torch.no_grad():
                        plain.weight.copy_(base.weight + module.scaling * module.lora_B.weight @ module.lora_A.weight)
                    parent_name, _, child_name = name.rpartition(".")
                    setattr(merged.get_submodule(parent_name), child_name, plain)
            return merged
    '''), "merge_all_outputs", "keep the pretrained bias"),
    bug("05-merge-in-place", "05", answer("merge_all", '''
        def merge_all(model):
            for name, module in list(model.named_modules()):
                if isinstance(module, LoRALinear):
                    with torch.no_grad():
                        module.base_layer.weight += module.scaling * module.lora_B.weight @ module.lora_A.weight
                    parent_name, _, child_name = name.rpartition(".")
                    setattr(model.get_submodule(parent_name), child_name, module.base_layer)
            return model
    '''), "merge_all_leaves_model", "changed the adapted model"),
    # --- the paper's table ---------------------------------------------------------------------
    bug("05-paper-count-without-the-2", "05", answer("lora_trainable_parameters", '''
        def lora_trainable_parameters(num_layers, d_model, ranks):
            return num_layers * sum(d_model * rank for rank in ranks.values())
    '''), "paper_table_counts", "two factors"),
    bug("05-paper-count-one-layer", "05", answer("lora_trainable_parameters", '''
        def lora_trainable_parameters(num_layers, d_model, ranks):
            return sum(2 * d_model * rank for rank in ranks.values())
    '''), "paper_table_counts", "every one of the num_layers layers"),
    bug("05-paper-count-one-rank", "05", answer("lora_trainable_parameters", '''
        def lora_trainable_parameters(num_layers, d_model, ranks):
            rank = next(iter(ranks.values()))
            return num_layers * len(ranks) * 2 * d_model * rank
    '''), "paper_table_counts", "assumes one rank for every matrix type"),
    bug("05-paper-millions-rounded", "05", answer("paper_millions", '''
        def paper_millions(count):
            return f"{count / 1e6:.1f}M"
    '''), "paper_millions", "the paper truncates"),

    # --- correct answers written differently -----------------------------------------------------
    variant("05-add-lora-by-module-dict-and-name-prefix", "05", answer("add_lora", '''
        def add_lora(model, targets, rank=4, alpha=8, trainable=()):
            modules = dict(model.named_modules())
            for name in targets:
                *path, child = name.split(".")
                setattr(modules[".".join(path)], child, LoRALinear(modules[name], rank, alpha))
            for name, parameter in model.named_parameters():
                in_trainable = any(name.startswith(prefix + ".") for prefix in trainable)
                parameter.requires_grad = in_trainable or ".lora_A." in name or ".lora_B." in name
            return model
    ''')),
    variant("05-add-lora-by-add-module", "05", answer("add_lora", ADD_LORA_BY_ADD_MODULE)),
    variant("05-count-by-id", "05", answer("count_parameters", '''
        def count_parameters(model):
            unique = {id(p): p for p in model.parameters()}.values()
            trainable = sum(p.numel() for p in unique if p.requires_grad)
            return int(trainable), int(sum(p.numel() for p in unique))
    ''')),
    variant("05-checkpoint-of-parameters", "05", {
        **answer("adapter_state_dict", '''
            def adapter_state_dict(model):
                return {name: p for name, p in model.named_parameters() if p.requires_grad}
        '''),
        **answer("load_adapter", '''
            def load_adapter(model, checkpoint):
                parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
                missing = parameters.keys() - checkpoint.keys()
                unexpected = checkpoint.keys() - parameters.keys()
                if missing or unexpected:
                    raise ValueError(f"missing {sorted(missing)}, unexpected {sorted(unexpected)}")
                for name, value in checkpoint.items():
                    if value.shape != parameters[name].shape:
                        raise ValueError(f"{name}: shape {tuple(value.shape)}, not {tuple(parameters[name].shape)}")
                with torch.no_grad():
                    for name, value in checkpoint.items():
                        parameters[name].copy_(value)
        '''),
    }),
    variant("05-merge-all-new-linears", "05", answer("merge_all", '''
        def merge_all(model):
            merged = copy.deepcopy(model)
            lora_layers = [(name, m) for name, m in merged.named_modules() if type(m).__name__ == "LoRALinear"]
            for name, layer in lora_layers:
                base = layer.base_layer
                plain = nn.Linear(base.in_features, base.out_features)
                delta = layer.scaling * torch.einsum("or,ri->oi", layer.lora_B.weight, layer.lora_A.weight)
                plain.load_state_dict({"weight": base.weight + delta, "bias": base.bias})
                parent_name, _, child_name = name.rpartition(".")
                setattr(merged.get_submodule(parent_name), child_name, plain.requires_grad_(False))
            return merged
    ''')),
    variant("05-paper-with-floats", "05", {
        **answer("lora_trainable_parameters", '''
            def lora_trainable_parameters(num_layers, d_model, ranks):
                total = 0
                for matrix_type in ranks:
                    A = ranks[matrix_type] * d_model
                    B = d_model * ranks[matrix_type]
                    total += num_layers * (A + B)
                return total
        '''),
        **answer("paper_millions", '''
            def paper_millions(count):
                return f"{math.floor(count / 1e5) / 10}M"
        '''),
    }),
]
