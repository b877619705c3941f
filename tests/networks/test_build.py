"""build_network and the named architectures: plans dicts in, modules out, rebuildable from JSON."""
from __future__ import annotations

import json

import pytest
import torch

from nnreg.networks import (
    CPU_VARIANTS,
    PAPER_VARIANTS,
    CascadeRegNet,
    VoxelMorph,
    build_network,
    default_architecture,
    named_architecture,
)
from nnreg.utilities.errors import ConfigurationError


def test_default_architecture_follows_the_paper():
    arch = default_architecture(5)
    assert arch["network_class"] == "CascadeRegNet"
    kw = arch["kwargs"]
    assert (kw["n_levels"], kw["base_channels"], kw["flow_channels"], kw["kernel_size"]) == (5, 32, 64, 3)
    assert (kw["cascade"], kw["integration_steps"], kw["co_attention"], kw["bilateral_filter"]) == ("compose", 7, False, False)
    assert default_architecture(3, base_channels=16)["kwargs"]["flow_channels"] == 32
    with pytest.raises(KeyError):
        default_architecture(3, not_a_kwarg=1)


def test_paper_variants_table():
    assert set(PAPER_VARIANTS) == {
        "backbone", "backbone+BF", "backbone+CA", "backbone+CA+BF", "backbone+LK", "backbone+LC-1", "backbone+LC-2",
    }
    lk = PAPER_VARIANTS["backbone+LK"]["kwargs"]
    assert (lk["base_channels"], lk["kernel_size"]) == (36, 5)
    assert PAPER_VARIANTS["backbone+LC-1"]["kwargs"]["cascade"] == "add"
    assert PAPER_VARIANTS["backbone+LC-2"]["kwargs"]["cascade"] == "compose"
    assert PAPER_VARIANTS["backbone+LC-2"]["kwargs"]["base_channels"] == 64
    assert all(v["kwargs"]["skip_levels"] == 1 for k, v in CPU_VARIANTS.items() if k.endswith("half"))


@pytest.mark.parametrize("name", [*PAPER_VARIANTS, *CPU_VARIANTS, "VoxelMorph"])
def test_every_variant_rebuilds_from_json(name):
    arch = json.loads(json.dumps(named_architecture(name, n_levels=3)))
    model = build_network(arch)
    assert isinstance(model, (CascadeRegNet, VoxelMorph))
    rebuilt = build_network(json.loads(json.dumps(model.architecture)))
    assert model.architecture == rebuilt.architecture
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}
    rebuilt.load_state_dict(model.state_dict())


def test_dotted_path_and_errors():
    model = build_network({"network_class": "nnreg.networks.voxelmorph.VoxelMorph", "kwargs": {}})
    assert isinstance(model, VoxelMorph) and model.divisor == 16
    with pytest.raises(ConfigurationError):
        build_network({"network_class": "NoSuchNet", "kwargs": {}})
    with pytest.raises(ConfigurationError):
        build_network({"network_class": "nnreg.networks.nosuch.Net"})
    with pytest.raises(ConfigurationError):
        build_network({"network_class": "json.JSONDecoder"})


def test_a_network_outside_nnreg_is_imported_only_when_trusted(tmp_path, monkeypatch):
    """A plans file or checkpoint of a shared model names the class: importing an arbitrary module would run its
    code, so a dotted path outside nnreg is refused, and nothing imported, unless the user names it."""
    import sys

    from nnreg.networks.build import TRUSTED_NETWORKS_ENV

    marker = tmp_path / "imported"
    (tmp_path / "shared_net_mod.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from nnreg.networks.voxelmorph import VoxelMorph as Net\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(TRUSTED_NETWORKS_ENV, raising=False)
    with pytest.raises(ConfigurationError, match=TRUSTED_NETWORKS_ENV):
        build_network({"network_class": "shared_net_mod.Net", "kwargs": {}})
    assert not marker.exists() and "shared_net_mod" not in sys.modules
    monkeypatch.setenv(TRUSTED_NETWORKS_ENV, "other.Net, shared_net_mod.Net")
    assert isinstance(build_network({"network_class": "shared_net_mod.Net", "kwargs": {}}), VoxelMorph)
    assert marker.read_text() == "ran"
    monkeypatch.delitem(sys.modules, "shared_net_mod")
    with pytest.raises(ConfigurationError):
        build_network({"network_class": "CascadeRegNet", "kwargs": {"bogus": 1}})
    with pytest.raises(ConfigurationError):
        build_network(default_architecture(3, cascade="multiply"))
    with pytest.raises(ConfigurationError):
        build_network(default_architecture(3, skip_levels=3))


def test_divisor_and_shape_check():
    model = build_network(default_architecture(4))
    assert model.divisor == 8
    with pytest.raises(ValueError):
        model(torch.rand(1, 1, 12, 16, 16), torch.rand(1, 1, 12, 16, 16))


def test_a_network_no_memory_holds_is_one_line():
    """A width no memory holds (a typo in hand-edited plans): the allocator's error as a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="cannot build CascadeRegNet"):
        build_network(default_architecture(3, base_channels=100000))
