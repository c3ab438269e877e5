"""The registry is the single source of the methods, and every method runs on a user's own network.
(The package's layers are checked in tests/test_layers.py.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import paper_code
from paper_code import metrics
from paper_code.experiments.paper import paper_table
from paper_code.experiments.tablerun import table_methods
from paper_code.methods import METHODS, PAPER_NAMES, explain
from paper_code.methods.registry import KINDS

#: Small options so each method runs in a second on a 64x64 image.
QUICK = {
    "opticam": {"iterations": 3},
    "extremal": {"iterations": 3},
    "lime": {"num_samples": 20},
    "gradientshap": {"n_samples": 4},
}


def plain_cnn() -> nn.Sequential:
    """A user's network: no paper_code wrapper, no ``get_layer``, no standardization."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),  # "3": the feature layer, 16 x 16 x 16
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    ).eval()


@pytest.mark.parametrize("method", [m for m, s in METHODS.items() if "cnn" in s.families])
def test_every_cnn_method_runs_on_a_plain_sequential(method):
    model = plain_cnn()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    spec = METHODS[method]
    layer = {"layer": "3"} if spec.needs_layer else {}
    maps = explain(method, model, x, [1, 4], **layer, **QUICK.get(method, {}))
    assert maps.shape == (2, 1, 64, 64)
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    # (A map may be all zero: a CAM of a class that the random features only count against.)
    # The network is left as it was.
    assert all(p.requires_grad for p in model.parameters()) and not model.training
    # And the metrics take the same network.
    r = metrics.classification(model, x, maps, torch.tensor([1, 4]))
    assert set(r) >= {"AD", "AG", "AI"} and all(torch.isfinite(v).all() for v in r.values())


class OutputForm(nn.Module):
    """``plain_cnn`` returning its logits as Hugging Face, torchvision-aux or dict models do."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.net, self.form = plain_cnn(), form

    def forward(self, x):
        y = self.net(x)
        if self.form == "tuple":  # main head first, an auxiliary one after
            return y, -y
        if self.form == "dict":
            return {"aux": -y, "logits": y}
        if self.form == "object":
            return SimpleNamespace(logits=y, hidden_states=None)
        return y


@pytest.mark.parametrize("method", [m for m, s in METHODS.items() if "cnn" in s.families])
def test_methods_read_logits_of_any_output_form_and_ignore_the_callers_grad_mode(method):
    """Same maps, to float rounding, whatever the model returns (tensor, tuple, dict, object with
    ``.logits``) and whether the caller is in no_grad or inference_mode (gc #80, #121, #481)."""
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    layer = {"layer": "net.3"} if METHODS[method].needs_layer else {}
    opts = {**layer, **QUICK.get(method, {})}
    reference = explain(method, OutputForm("tensor"), x, [1, 4], **opts)
    for form, mode in (("tuple", torch.no_grad), ("dict", torch.inference_mode),
                       ("object", torch.enable_grad)):  # fmt: skip
        model = OutputForm(form)
        with mode():
            maps = explain(method, model, x, [1, 4], **opts)
        torch.testing.assert_close(maps, reference, atol=1e-6, rtol=0, msg=f"{form} / {mode}")
    r = metrics.classification(OutputForm("dict"), x, reference, torch.tensor([1, 4]))
    r0 = metrics.classification(OutputForm("tensor"), x, reference, torch.tensor([1, 4]))
    assert all(torch.equal(r[k], r0[k]) for k in ("AD", "AG", "AI"))


def test_unreadable_outputs_and_unknown_options_are_named():
    x = torch.rand(1, 3, 32, 32)

    class Bad(nn.Module):
        def __init__(self, out):
            super().__init__()
            self.conv, self.out = nn.Conv2d(3, 2, 3), out

        def forward(self, x):
            y = self.conv(x)
            return {"scores": y.mean((2, 3))} if self.out == "dict" else y

    with pytest.raises(TypeError, match=r"returned a dict with keys \['scores'\].*logits"):
        explain("gradcam", Bad("dict"), x, [0], layer="conv")
    with pytest.raises(TypeError, match=r"logits must be \[B, C\].*\[1, 2, 30, 30\]"):
        explain("gradcam", Bad("map"), x, [0], layer="conv")
    with pytest.raises(
        TypeError, match="scorecam has no option 'iterations'; its options: batch_size"
    ):
        explain("scorecam", plain_cnn(), x, [0], layer="3", iterations=3)


def test_layer_methods_need_a_layer_on_a_plain_network():
    # The error names the candidates, last first: plain_cnn's "3" (the ReLU after the second
    # conv, 16 x 8 x 8 on 32 x 32 images), then that conv "2", then the first ReLU "1".
    with pytest.raises(ValueError, match=r"spatial feature maps here: '3' \[16, 8, 8\], '2' "
                                         r"\[16, 8, 8\], '1' \[8, 16, 16\]$"):  # fmt: skip
        explain("gradcam", plain_cnn(), torch.rand(1, 3, 32, 32), [0])
    with pytest.raises(ValueError, match="no layer 'nope'"):
        explain("gradcam", plain_cnn(), torch.rand(1, 3, 32, 32), [0], layer="nope")


def test_shared_module_that_fires_twice_is_refused():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), relu, nn.Conv2d(4, 4, 3), relu, nn.Flatten(),
                          nn.LazyLinear(3))  # fmt: skip
    model(torch.rand(1, 3, 16, 16))
    for method, options in (("opticam", {"iterations": 1}), ("gradcam", {}), ("scorecam", {})):
        with pytest.raises(ValueError, match="ran 2 times"):
            explain(method, model, torch.rand(1, 3, 16, 16), [0], layer=relu, **options)


def test_registry_is_the_single_source_of_names_and_kinds():
    assert PAPER_NAMES == {n: s.paper_name for n, s in METHODS.items()}
    assert paper_code.PAPER_NAMES == PAPER_NAMES
    for spec in METHODS.values():
        assert spec.kind in KINDS and spec.summary
        assert spec.needs_layer == (spec.kind in ("cam", "optimization"))
    # Every method row of the paper's CNN tables is a registered method (nothing paper-only left).
    for table in ("table1", "table3", "table4", "table5", "table6", "tableA7"):
        for network in set(paper_table(table)["network"]):
            ids, missing = table_methods(table, network)
            assert not missing, f"{table}/{network}: paper rows without a method: {missing}"
            assert ids and ids[-1] == "opticam"
    ids, _ = table_methods("table1", "resnet50")
    assert ids == ["fakecam", "gradcam", "gradcampp", "scorecam", "ablationcam", "xgradcam",
                   "layercam", "extremal", "hirescam", "lime", "gradientshap", "opticam"]  # fmt: skip
    vit, _ = table_methods("table2", "vit_b", family="vit")
    assert {"rawatt", "rollout", "tibav"} <= set(vit) and "ablationcam" not in vit


# --------------------------------------------------------------------------- defaults stated once


def test_every_default_is_stated_once() -> None:
    """A default lives in the signature of the function that uses it. The registry reads a
    method's defaults from its signature (there is nowhere else to write them), and no profile or
    notebook parameter cell repeats one: they say ``null``/``None`` for "the default" and set only
    what they change. Fails on a profile setting an option to its default value, on an unknown
    option, and on a parameter cell that spells out Opti-CAM's iteration count."""
    import inspect

    import jupytext

    from paper_code.book.profiles import list_profiles, load_profile, profile_parameters
    from paper_code.book.runner import notebook_parameters
    from paper_code.book.toc import toc_notebooks
    from paper_code.experiments.scores import protocol_options
    from paper_code.methods import METHODS
    from paper_code.methods.opticam import ITERATIONS
    from paper_code.methods.registry import register

    assert "defaults" not in inspect.signature(register).parameters
    for spec in METHODS.values():  # read from the signature, not stored
        assert "defaults" not in {f.name for f in spec.__dataclass_fields__.values()}
    repeated = []
    for name in list_profiles():
        prof = load_profile(name)
        pages = [None, *prof["notebooks"]]
        for page in pages:
            params = profile_parameters(prof, page)
            where = f"{name}{'.' + page if page else ''}"
            if params.get("iterations") == ITERATIONS:
                repeated.append(f"{where}: iterations {ITERATIONS} is Opti-CAM's default (null)")
            for method, opts in (params.get("method_options") or {}).items():
                defaults = METHODS[method].defaults
                for k, v in opts.items():
                    assert k in defaults, f"{where}: {method} has no option {k}"
                    if defaults[k] == v:
                        repeated.append(f"{where}: {method}.{k} = {v!r} is its default")
            for metric, opts in (params.get("protocol") or {}).items():
                defaults = protocol_options({}, metric)
                for k, v in opts.items():
                    if defaults[k] == v:
                        repeated.append(f"{where}: protocol {metric}.{k} = {v!r} is its default")
    for src in toc_notebooks():
        declared = notebook_parameters(jupytext.read(src))
        if declared.get("iterations") not in (None,):
            repeated.append(f"{src.name}: iterations = {declared['iterations']} (say None)")
        if declared.get("method_options") is not None:
            repeated.append(f"{src.name}: method_options has values (say None)")
    assert not repeated, "\n".join(repeated)


def test_every_page_reads_a_null_iterations_through_its_one_helper() -> None:
    """``iterations: null`` (the default of every profile but smoke) means Opti-CAM's default.
    A page that uses the value itself (a caption, a provenance entry) must resolve it with
    ``opticam_iterations`` first: ``int(iterations)`` on ``None`` failed Table A.9 on ``sample``
    while ``smoke``, which sets a number, ran. Code cells only, parameter cell excluded."""
    import re

    import jupytext

    from paper_code.book.toc import toc_notebooks

    raw = re.compile(r"(?<![\w.])(int|float|range|min|max)\(\s*iterations\s*\)|\{iterations[}:!]")
    bad = []
    for src in toc_notebooks():
        nb = jupytext.read(src)
        code = [c.source for c in nb.cells if c.cell_type == "code"
                and "parameters" not in c.metadata.get("tags", [])]  # fmt: skip
        text = "\n".join(code)
        resolved = re.search(r"^iterations = opticam_iterations\(iterations\)", text, re.M)
        for line in text.splitlines():
            if raw.search(line) and not resolved:
                bad.append(f"{src.name}: {line.strip()}")
    assert not bad, "\n".join(bad)
