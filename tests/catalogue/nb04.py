"""Notebook 04: MergeableLoRALinear and export_merged.

A submission is the solution with one method (or export_merged) swapped for the version below.
Replacing the base weight with a new nn.Parameter counts as a bug, by the notebook's contract:
merging happens in place, because an optimizer or a tied weight holding the old Parameter would
keep the unmerged values.
"""
import textwrap

from catalogue import bug, variant

INIT = '''
def __init__(self, base_layer, rank=4, alpha=1):
    super().__init__(base_layer, rank=rank, alpha=alpha)
    self.merged = False
'''

MERGE = '''
def merge_lora(self):
    if self.merged:
        return
    with torch.no_grad():
        self.base_layer.weight.add_(self.scaling * (self.lora_B.weight @ self.lora_A.weight))
    self.merged = True
'''

UNMERGE = '''
def unmerge_lora(self):
    if not self.merged:
        return
    with torch.no_grad():
        self.base_layer.weight.sub_(self.scaling * (self.lora_B.weight @ self.lora_A.weight))
    self.merged = False
'''

FORWARD = '''
def forward(self, x):
    if self.merged:
        return self.base_layer(x)
    return super().forward(x)
'''

EXPORT = '''
def export_merged(layer):
    base = layer.base_layer
    merged = nn.Linear(base.in_features, base.out_features)
    with torch.no_grad():
        merged.weight.copy_(base.weight)
        if not layer.merged:
            merged.weight.add_(layer.scaling * (layer.lora_B.weight @ layer.lora_A.weight))
        merged.bias.copy_(base.bias)
    return merged.requires_grad_(False)
'''


def mergeable(init=INIT, merge=MERGE, unmerge=UNMERGE, forward=FORWARD, extra="", header=""):
    """The class cell with some methods swapped; an empty string leaves a method inherited."""
    methods = "\n".join(textwrap.indent(textwrap.dedent(m).strip("\n"), "    ") + "\n"
                        for m in (init, merge, unmerge, forward, extra) if m)
    return {"mergeable_lora_linear_answer": header + "class MergeableLoRALinear(LoRALinear):\n" + methods}


def export(source):
    return {"export_merged_answer": textwrap.dedent(source)}


ENTRIES = [
    # --- bugs in MergeableLoRALinear, in the order of the checks that catch them ---
    bug("04-seed-merge-forward-not-changed", "04", mergeable(merge='''
        @torch.no_grad()
        def merge_lora(self):
            # Calculate the delta weight: (out, rank) @ (rank, in) -> (out, in)
            weight_delta = self.lora_B.weight @ self.lora_A.weight
            # Update base layer in-place
            self.base_layer.weight += weight_delta * self.scaling
            self.merged = True
    ''', forward=""), "merged_forward_is_plain_linear", "counts twice"),
    bug("04-seed-merge-without-no-grad", "04", mergeable(merge='''
        def merge_lora(self):
            if self.merged:
                return
            self.base_layer.weight += self.lora_B.weight @ self.lora_A.weight * self.scaling
            self.merged = True
    '''), "merge_lora_weight", "autograd recorded the in-place add"),
    bug("04-merge-without-scaling", "04", mergeable(merge='''
        def merge_lora(self):
            if self.merged:
                return
            with torch.no_grad():
                self.base_layer.weight += self.lora_B.weight @ self.lora_A.weight
            self.merged = True
    '''), "merge_lora_weight", "no scaling"),
    bug("04-merge-transposed-delta", "04", mergeable(merge='''
        def merge_lora(self):
            if self.merged:
                return
            with torch.no_grad():
                # math convention: A is (in, r), B is (r, out)
                self.base_layer.weight += self.scaling * (self.lora_A.weight.T @ self.lora_B.weight.T)
            self.merged = True
    '''), "merge_lora_weight", "transposed"),
    bug("04-merge-transposed-delta-reshaped-to-fit", "04", mergeable(merge='''
        def merge_lora(self):
            if self.merged:
                return
            with torch.no_grad():
                delta = self.scaling * (self.lora_A.weight.T @ self.lora_B.weight.T)
                self.base_layer.weight += delta.reshape(self.base_layer.weight.shape)
            self.merged = True
    '''), "merge_lora_weight", "reshape and view keep the numbers in memory order"),
    bug("04-merge-subtracts", "04", mergeable(merge='''
        def merge_lora(self):
            if self.merged:
                return
            with torch.no_grad():
                self.base_layer.weight -= self.scaling * self.lora_B.weight @ self.lora_A.weight
            self.merged = True
    ''', unmerge='''
        def unmerge_lora(self):
            if not self.merged:
                return
            with torch.no_grad():
                self.base_layer.weight += self.scaling * self.lora_B.weight @ self.lora_A.weight
            self.merged = False
    '''), "merge_lora_weight", "subtracted instead of added"),
    bug("04-merge-into-a-copy", "04", mergeable(merge='''
        def merge_lora(self):
            if self.merged:
                return
            with torch.no_grad():
                weight = self.base_layer.weight.clone()
                weight += self.scaling * self.lora_B.weight @ self.lora_A.weight
            self.merged = True
    '''), "merge_lora_weight", "did not change at all"),
    bug("04-merged-flag-never-set", "04", mergeable(merge='''
        def merge_lora(self):
            with torch.no_grad():
                self.base_layer.weight += self.scaling * self.lora_B.weight @ self.lora_A.weight
    '''), "merge_lora_flag", "still False after merge_lora()"),
    bug("04-merge-add-without-no-grad", "04", mergeable(merge='''
        def merge_lora(self):
            if self.merged:
                return
            self.base_layer.weight.add_(self.scaling * self.lora_B.weight @ self.lora_A.weight)
            self.merged = True
    '''), "merged_weight_frozen_leaf", "autograd recorded the merge"),
    bug("04-merge-new-parameter", "04", mergeable(merge='''
        def merge_lora(self):
            if self.merged:
                return
            delta = self.scaling * self.lora_B.weight @ self.lora_A.weight
            self.base_layer.weight = nn.Parameter(self.base_layer.weight + delta)
            self.merged = True
    '''), "merged_weight_frozen_leaf", "requires grad"),
    bug("04-merge-new-frozen-parameter", "04", mergeable(merge='''
        def merge_lora(self):
            if self.merged:
                return
            with torch.no_grad():
                delta = self.scaling * self.lora_B.weight @ self.lora_A.weight
                self.base_layer.weight = nn.Parameter(self.base_layer.weight + delta, requires_grad=False)
            self.merged = True
    '''), "merged_weight_frozen_leaf", "replaced base_layer.weight with a new nn.Parameter"),
    bug("04-merging-twice-adds-twice", "04", mergeable(merge='''
        def merge_lora(self):
            with torch.no_grad():
                self.base_layer.weight += self.scaling * self.lora_B.weight @ self.lora_A.weight
            self.merged = True
    '''), "merge_twice_changes_nothing", "added the update again"),
    bug("04-unmerge-without-scaling", "04", mergeable(unmerge='''
        def unmerge_lora(self):
            if not self.merged:
                return
            with torch.no_grad():
                self.base_layer.weight -= self.lora_B.weight @ self.lora_A.weight
            self.merged = False
    '''), "unmerge_lora_restores_weight", "without scaling"),
    bug("04-unmerge-keeps-flag", "04", mergeable(unmerge='''
        def unmerge_lora(self):
            if not self.merged:
                return
            with torch.no_grad():
                self.base_layer.weight -= self.scaling * self.lora_B.weight @ self.lora_A.weight
    '''), "unmerge_lora_restores_weight", "still True after unmerge_lora()"),
    bug("04-unmerge-without-guard", "04", mergeable(unmerge='''
        def unmerge_lora(self):
            with torch.no_grad():
                self.base_layer.weight -= self.scaling * self.lora_B.weight @ self.lora_A.weight
            self.merged = False
    '''), "unmerge_when_not_merged", "subtracted the update"),
    # --- bugs in export_merged ---
    bug("04-export-forgets-bias", "04", export('''
        def export_merged(layer):
            base = layer.base_layer
            merged = nn.Linear(base.in_features, base.out_features, bias=False)
            with torch.no_grad():
                merged.weight.copy_(base.weight)
                if not layer.merged:
                    merged.weight += layer.scaling * layer.lora_B.weight @ layer.lora_A.weight
            return merged.requires_grad_(False)
    '''), "export_merged_output", "has no bias"),
    bug("04-export-random-bias", "04", export('''
        def export_merged(layer):
            base = layer.base_layer
            merged = nn.Linear(base.in_features, base.out_features)
            with torch.no_grad():
                merged.weight.copy_(base.weight)
                if not layer.merged:
                    merged.weight += layer.scaling * layer.lora_B.weight @ layer.lora_A.weight
            return merged.requires_grad_(False)
    '''), "export_merged_output", "starts with a random bias"),
    bug("04-export-adds-again-when-merged", "04", export('''
        def export_merged(layer):
            merged = copy.deepcopy(layer.base_layer)
            with torch.no_grad():
                merged.weight += layer.scaling * layer.lora_B.weight @ layer.lora_A.weight
            return merged
    '''), "export_merged_output", "already holds"),
    bug("04-export-returns-the-lora-layer", "04", export('''
        def export_merged(layer):
            merged = copy.deepcopy(layer)
            merged.merge_lora()
            return merged
    '''), "export_merged_output", "returned a MergeableLoRALinear"),
    bug("04-export-not-frozen", "04", export('''
        def export_merged(layer):
            base = layer.base_layer
            merged = nn.Linear(base.in_features, base.out_features)
            with torch.no_grad():
                merged.weight.copy_(base.weight)
                if not layer.merged:
                    merged.weight += layer.scaling * layer.lora_B.weight @ layer.lora_A.weight
                merged.bias.copy_(base.bias)
            return merged
    '''), "export_merged_frozen", "requires grad"),
    bug("04-export-leaves-layer-merged", "04", export('''
        def export_merged(layer):
            layer.merge_lora()
            return copy.deepcopy(layer.base_layer)
    '''), "export_merged_leaves_layer", "left the layer's `merged` flag at True"),
    bug("04-export-aliases-the-base", "04", export('''
        def export_merged(layer):
            if layer.merged:
                return layer.base_layer  # already merged: nothing to do
            merged = copy.deepcopy(layer)
            merged.merge_lora()
            return merged.base_layer
    '''), "export_merged_leaves_layer", "shares its numbers"),
    bug("04-export-parameter-shares-the-bias", "04", export('''
        def export_merged(layer):
            base = layer.base_layer
            with torch.no_grad():
                weight = base.weight + layer.scaling * layer.lora_B.weight @ layer.lora_A.weight
                if layer.merged:
                    weight = base.weight.clone()
            merged = nn.Linear(base.in_features, base.out_features)
            merged.weight = nn.Parameter(weight, requires_grad=False)
            merged.bias = nn.Parameter(base.bias, requires_grad=False)  # wraps the same storage
            return merged
    '''), "export_merged_leaves_layer", "shares its numbers"),
    bug("04-export-shares-then-unmerges", "04", export('''
        def export_merged(layer):
            was_merged = layer.merged
            if not was_merged:
                layer.merge_lora()
            base = layer.base_layer
            merged = nn.Linear(base.in_features, base.out_features)
            merged.weight, merged.bias = base.weight, base.bias  # the layer's own Parameters
            if not was_merged:
                layer.unmerge_lora()
            return merged.requires_grad_(False)
    '''), "export_merged_output", "share their storage with the layer"),
    bug("04-export-reports-itself-frozen", "04", export('''
        class FrozenLooking(nn.Linear):
            def named_parameters(self, *args, **kwargs):
                for name, p in super().named_parameters(*args, **kwargs):
                    yield name, p.detach()

        def export_merged(layer):
            base = layer.base_layer
            merged = FrozenLooking(base.in_features, base.out_features)
            with torch.no_grad():
                merged.weight.copy_(base.weight)
                if not layer.merged:
                    merged.weight.add_(layer.scaling * (layer.lora_B.weight @ layer.lora_A.weight))
                merged.bias.copy_(base.bias)
            return merged
    '''), "export_merged_frozen", "requires grad"),

    # --- correct answers written differently ---
    variant("04-data-merge", "04", mergeable(merge='''
        def merge_lora(self):
            if not self.merged:
                self.base_layer.weight.data += self.scaling * self.lora_B.weight.data @ self.lora_A.weight.data
                self.merged = True
    ''', unmerge='''
        def unmerge_lora(self):
            if self.merged:
                self.base_layer.weight.data -= self.scaling * self.lora_B.weight.data @ self.lora_A.weight.data
                self.merged = False
    ''')),
    variant("04-decorated-plus-equals-and-raises", "04", mergeable(merge='''
        @torch.no_grad()
        def merge_lora(self):
            if self.merged:
                raise RuntimeError("the adapter is already merged")
            self.base_layer.weight += self.lora_B.weight @ self.lora_A.weight * self.scaling
            self.merged = True
    ''', unmerge='''
        @torch.no_grad()
        def unmerge_lora(self):
            if not self.merged:
                raise ValueError("nothing to unmerge")
            self.base_layer.weight -= self.lora_B.weight @ self.lora_A.weight * self.scaling
            self.merged = False
    ''')),
    variant("04-addmm-and-f-linear", "04", mergeable(header="import torch.nn.functional as F\n\n", merge='''
        def merge_lora(self):
            assert not self.merged, "already merged"
            with torch.no_grad():
                weight = self.base_layer.weight
                weight.copy_(torch.addmm(weight, self.lora_B.weight, self.lora_A.weight, alpha=self.scaling))
            self.merged = True
    ''', unmerge='''
        def unmerge_lora(self):
            assert self.merged, "not merged"
            with torch.no_grad():
                weight = self.base_layer.weight
                weight.copy_(torch.addmm(weight, self.lora_B.weight, self.lora_A.weight, alpha=-self.scaling))
            self.merged = False
    ''', forward='''
        def forward(self, x):
            weight, bias = self.base_layer.weight, self.base_layer.bias
            out = F.linear(x, weight, bias)
            if not self.merged:
                out = out + self.scaling * F.linear(F.linear(x, self.lora_A.weight), self.lora_B.weight)
            return out
    ''')),
    variant("04-delta-weight-helper-and-warning", "04", {
        **mergeable(header="import warnings\n\n", merge='''
            def merge_lora(self):
                if self.merged:
                    warnings.warn("already merged: nothing to do")
                    return
                with torch.no_grad():
                    self.base_layer.weight += self.delta_weight()
                self.merged = True
        ''', unmerge='''
            def unmerge_lora(self):
                if not self.merged:
                    warnings.warn("not merged: nothing to do")
                    return
                with torch.no_grad():
                    self.base_layer.weight -= self.delta_weight()
                self.merged = False
        ''', extra='''
            def delta_weight(self):
                return (self.lora_B.weight @ self.lora_A.weight) * self.scaling
        '''),
        **export('''
            def export_merged(layer):
                base = layer.base_layer
                with torch.no_grad():
                    weight = base.weight.clone()
                    if not layer.merged:
                        weight += layer.delta_weight()
                merged = nn.Linear(base.in_features, base.out_features)
                merged.weight = nn.Parameter(weight, requires_grad=False)
                merged.bias = nn.Parameter(base.bias.detach().clone(), requires_grad=False)
                return merged
        '''),
    }),
    variant("04-cached-delta", "04", mergeable(merge='''
        def merge_lora(self):
            if self.merged:
                return
            with torch.no_grad():
                self._merged_delta = self.scaling * torch.einsum("or,ri->oi", self.lora_B.weight, self.lora_A.weight)
                self.base_layer.weight.add_(self._merged_delta)
            self.merged = True
    ''', unmerge='''
        def unmerge_lora(self):
            if not self.merged:
                return
            with torch.no_grad():
                self.base_layer.weight.sub_(self._merged_delta)
            del self._merged_delta
            self.merged = False
    ''')),
    variant("04-export-deepcopy-and-merge", "04", export('''
        def export_merged(layer):
            twin = copy.deepcopy(layer)
            if not twin.merged:
                twin.merge_lora()
            return twin.base_layer.requires_grad_(False)
    ''')),
    variant("04-export-merge-then-put-back", "04", export('''
        def export_merged(layer):
            was_merged = layer.merged
            if not was_merged:
                layer.merge_lora()
            base = layer.base_layer
            merged = nn.Linear(base.in_features, base.out_features)
            merged.load_state_dict(base.state_dict())
            if not was_merged:
                layer.unmerge_lora()
            return merged.requires_grad_(False)
    ''')),
]
