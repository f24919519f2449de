"""The ops layer under the network: the network file holds no back-end logic, the back-end choice,
the kernel build entry point and the packaging of the moved kernel sources."""
from __future__ import annotations

import ast

import pytest
import torch

from jdnet_cli import ops
from jdnet_cli.ops import attention, cpu_kernels, pairwise_attention

from ..conftest import REPO, make_tiny_model

NETWORK = REPO / "jdnet_cli" / "models" / "jdnet.py"
ALLOWED_IMPORTS = {"__future__", "typing", "torch", "torch.nn", "torch.nn.functional"}


def count_kernel_calls(monkeypatch) -> dict[str, int]:
    """Count every C++ kernel wrapper call and every banded or reference attention call from now on."""
    calls: dict[str, int] = {}

    def wrap(module, name):
        def counted(*a, _f=getattr(module, name), **k):
            calls[name] = calls.get(name, 0) + 1
            return _f(*a, **k)
        monkeypatch.setattr(module, name, counted)

    for name in dir(cpu_kernels):
        if name.endswith("_cpu"):
            wrap(cpu_kernels, name)
    wrap(pairwise_attention, "pairwise_attention_banded")
    wrap(attention, "pairwise_attention_reference")
    return calls


def _kernels(calls: dict[str, int]) -> int:
    return sum(n for name, n in calls.items() if name.endswith("_cpu"))


def test_network_imports_only_torch_and_the_ops_layer():
    tree = ast.parse(NETWORK.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert {a.name for a in node.names} <= ALLOWED_IMPORTS, ast.unparse(node)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                assert node.module in ALLOWED_IMPORTS, ast.unparse(node)
            else:  # relative: the ops package (from .. import ops) or names from it (from ..ops import x)
                assert node.level == 2 and (node.module == "ops" or (node.module is None and [a.name for a in node.names] == ["ops"])), ast.unparse(node)


def test_network_has_no_back_end_checks():
    names = {n.id for n in ast.walk(ast.parse(NETWORK.read_text())) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(ast.parse(NETWORK.read_text())) if isinstance(n, ast.Attribute)}
    assert not [n for n in names if "usable" in n or n.endswith("_cpu") or n == "FUSION_OUT"]


def test_backend_context_restores_the_previous_choice():
    assert ops.current_backend() == "auto"
    with ops.backend("reference"):
        assert ops.current_backend() == "reference"
        with ops.backend("auto"):
            assert ops.current_backend() == "auto"
        assert ops.current_backend() == "reference"
    assert ops.current_backend() == "auto"
    with pytest.raises(ValueError, match="unknown ops back end"):
        with ops.backend("triton"):
            pass


@pytest.mark.parametrize("channels_last", [False, True])
def test_reference_backend_runs_no_kernel_and_the_unfold_attention(monkeypatch, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = make_tiny_model(channels=32, units=2).to(memory_format=fmt)
    x = torch.rand(1, 3, 12, 17, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=fmt)
    calls = count_kernel_calls(monkeypatch)
    with torch.inference_mode():
        fast = model(x)
        counted_fast = dict(calls)
        with ops.backend("reference"):
            reference = model(x)
    # Two units, one attention each; the fast path never runs the unfold op.
    assert counted_fast.get("pairwise_attention_reference", 0) == 0
    during_reference = {k: n - counted_fast.get(k, 0) for k, n in calls.items() if n != counted_fast.get(k, 0)}
    assert during_reference == {"pairwise_attention_reference": 2}
    assert (fast - reference).abs().max().item() <= 1e-4


def test_set_attention_op_picks_the_op_the_ops_layer_runs():
    # 32 channels, channels-last: where the fused SAM kernel would otherwise stand in for the op.
    model = make_tiny_model(channels=32, units=2).to(memory_format=torch.channels_last)
    seen = []
    model.set_attention_op(lambda *a: seen.append(len(a)) or ops.pairwise_attention_reference(*a))
    with torch.inference_mode():
        model(torch.rand(1, 3, 9, 10).contiguous(memory_format=torch.channels_last))
    assert seen == [8, 8]


def test_prepare_cpu_kernels_reports_what_it_did():
    usable = ops.prepare_cpu_kernels()
    assert isinstance(usable, bool)
    assert ops.cpu_kernels_status().startswith("loaded " if usable else ("disabled", "only", "no C++", "build"))


def test_kernel_source_is_packaged_where_the_build_looks():
    assert cpu_kernels.SOURCE == REPO / "jdnet_cli" / "ops" / "cpu_kernels.cpp"
    assert cpu_kernels.SOURCE.is_file()
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "jdnet_cli").rglob("__init__.py")}
    assert on_disk <= packages
    assert "*.cpp" in config["package-data"]["jdnet_cli.ops"]
    assert "jdnet_cli.models" not in config["package-data"]
