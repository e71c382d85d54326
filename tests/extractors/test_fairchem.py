"""fairchem eSEN / UMA checkpoints through fastcsi's batched radius graphs: invariant, batch-independent,
equal to fairchem's own loader and per-structure path, read without running anything the file names.

fairchem-core is an optional extra that CI does not install: these tests skip there and run in an
environment with ``fastcsi[fairchem]``. The checkpoints are tiny random models written here in
fairchem's own inference layout (no weights are downloaded)."""
import pickle

import pytest
import torch

from fastcsi.errors import FastCSIError
from fastcsi.pipeline.backbone import load_extractor

from helpers import check_invariance_and_batching, check_protocol, features_of

pytest.importorskip("fairchem.core", reason="fairchem-core is not installed (pip install \"fastcsi[fairchem]\")")

ESEN = "fairchem.core.models.uma.escn_md.eSCNMDBackbone"
UMA = "fairchem.core.models.uma.escn_moe.eSCNMDMoeBackbone"
HEADS = {"energy": {"module": "fairchem.core.models.uma.escn_md.MLP_Energy_Head"}}


def tiny_backbone_config(model: str, **extra) -> dict:
    # max_num_elements 90: atomic numbers 90+ are outside the model, for the element check.
    # grid_resolution 18: the grid feed-forward is rotation-equivariant only up to its quadrature
    # error; at fairchem's default grid for lmax 2 a rotation moves the l=0 features by ~4e-4, at 18
    # by ~1e-8 (a property of the architecture, not of the graphs fed to it)
    config = dict(model=model, max_num_elements=90, sphere_channels=16, lmax=2, mmax=2, grid_resolution=18,
                  cutoff=4.5,
                  max_neighbors=40, edge_channels=16, num_distance_basis=16, num_layers=2, hidden_channels=16,
                  regress_forces=False, direct_forces=False, otf_graph=True)
    config.update(extra)
    return config


def write_checkpoint(path, backbone_config: dict, model_id=None, seed=0, omegaconf=False):
    """A random fairchem HydraModel saved as fairchem's MLIPInferenceCheckpoint; the EMA weights are
    perturbed apart from the raw ones, so reading the wrong state dict shows."""
    from fairchem.core.models.base import HydraModel
    from fairchem.core.units.mlip_unit.api.inference import MLIPInferenceCheckpoint

    torch.manual_seed(seed)
    model = HydraModel(backbone=dict(backbone_config), heads=HEADS, model_id=model_id)
    ema = torch.optim.swa_utils.AveragedModel(model)
    with torch.no_grad():
        for p in model.parameters():  # fairchem zero-initialises some layers: make every weight count
            p.add_(0.1 * torch.randn_like(p))
        for p in ema.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model_config = {"_target_": "fairchem.core.models.base.HydraModel", "backbone": backbone_config,
                    "heads": HEADS}
    if model_id is not None:
        model_config["model_id"] = model_id
    if omegaconf:  # as a trainer may save it: an OmegaConf DictConfig instead of a dict
        from omegaconf import OmegaConf

        model_config = OmegaConf.create(model_config)
    checkpoint = MLIPInferenceCheckpoint(model_config=model_config, model_state_dict=model.state_dict(),
                                         ema_state_dict=ema.state_dict(), tasks_config=[])
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def esen_file(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("fairchem") / "esen.pt",
                            tiny_backbone_config(ESEN, use_dataset_embedding=False))


@pytest.fixture(scope="module")
def uma_file(tmp_path_factory):
    config = tiny_backbone_config(UMA, num_experts=2, use_composition_embedding=True, model_version=1.2,
                                  use_dataset_embedding=True, dataset_mapping={"omat": "omat", "omol": "omol"})
    return write_checkpoint(tmp_path_factory.mktemp("fairchem") / "uma.pt", config, model_id="UMA-TINY-1.2")


@pytest.fixture(scope="module")
def esen(esen_file):
    return load_extractor(f"fairchem:{esen_file}", dtype="float64")


@pytest.fixture(scope="module")
def uma(uma_file):
    return load_extractor(f"fairchem:{uma_file}:omat", dtype="float64")


def test_protocol_and_provenance(esen, uma, esen_file, uma_file):
    for extractor in (esen, uma):
        check_protocol(extractor)
        assert extractor.dim == 16 and extractor.cutoff == 4.5 and extractor.pretrained
        assert {1, 6, 8, 29} <= extractor.elements and 90 not in extractor.elements
    assert esen.name == "fairchem:esen.pt" and uma.name == "fairchem:uma.pt:omat"
    assert "eSCNMDMoeBackbone" in uma.describe()["backbone"]
    # another task is another extractor: its statistics must not be mixed with omat's
    assert load_extractor(f"fairchem:{uma_file}:omol", dtype="float64").fingerprint != uma.fingerprint
    assert load_extractor(f"fairchem:{esen_file}", dtype="float64").fingerprint == esen.fingerprint


@pytest.mark.parametrize("which", ["esen", "uma"])
def test_invariance_and_batch_independence(which, request, structures):
    check_invariance_and_batching(request.getfixturevalue(which), structures, atol=1e-6)


@pytest.mark.parametrize("which", ["esen", "uma"])
def test_batched_graphs_equal_fairchems_own_loader_and_path(which, request, structures):
    """Our reader + builder + batched graphs against fairchem's load_inference_model (a full unpickle:
    fine here, the test wrote the file) + AtomicData.from_ase + its own graph, one structure at a time."""
    from fairchem.core.datasets.atomic_data import AtomicData, atomicdata_list_to_batch
    from fairchem.core.units.mlip_unit.utils import load_inference_model

    extractor = request.getfixturevalue(which)
    ours = features_of(extractor, structures)
    # the same module fed fairchem's per-structure graphs
    torch.testing.assert_close(torch.cat(extractor.features_per_structure(structures)), ours, atol=1e-8, rtol=0)

    model, _ = load_inference_model(str(request.getfixturevalue(f"{which}_file")), use_ema=True)
    backbone = model.module.backbone.to(torch.float64).eval()
    backbone.always_use_pbc = False
    theirs = []
    with torch.no_grad():
        for atoms in structures:
            data = atomicdata_list_to_batch([AtomicData.from_ase(atoms, task_name=extractor.task,
                                                                 target_dtype=torch.float64)])
            data.pos, data.cell = data.pos.double(), data.cell.double()
            theirs.append(backbone(data)["node_embedding"][:, 0, :])
    torch.testing.assert_close(torch.cat(theirs), ours, atol=1e-8, rtol=0)


def test_max_neighbors_keeps_fairchems_edges(tmp_path, structures):
    """With max_neighbors 14 the Cu slab's atoms lose part of their second shell: fairchem ranks by
    squared distance with its 0.01 tolerance in Å^2, and our graph must keep exactly its edges."""
    from fastcsi.data import batch_from_atoms
    from fastcsi.graph import radius_graph

    slab = structures[-1]
    assert int(radius_graph(batch_from_atoms([slab]), 4.5).num_neighbors.max()) > 14  # the rule is exercised
    path = write_checkpoint(tmp_path / "esen14.pt",
                            tiny_backbone_config(ESEN, use_dataset_embedding=False, max_neighbors=14))
    extractor = load_extractor(f"fairchem:{path}", dtype="float64")
    theirs = torch.cat(extractor.features_per_structure(structures))
    torch.testing.assert_close(features_of(extractor, structures), theirs, atol=1e-8, rtol=0)


def test_omegaconf_model_config_reads_as_a_dict(tmp_path, structures):
    config = tiny_backbone_config(UMA, num_experts=2, use_composition_embedding=True, model_version=1.2,
                                  use_dataset_embedding=True, dataset_mapping={"omat": "omat", "omol": "omol"})
    as_dict = write_checkpoint(tmp_path / "dict.pt", config, model_id="UMA-TINY-1.2", seed=3)
    as_omegaconf = write_checkpoint(tmp_path / "omegaconf.pt", config, model_id="UMA-TINY-1.2", seed=3,
                                    omegaconf=True)
    a = load_extractor(f"fairchem:{as_dict}:omol", dtype="float64")
    b = load_extractor(f"fairchem:{as_omegaconf}:omol", dtype="float64")
    assert a.fingerprint == b.fingerprint
    torch.testing.assert_close(features_of(b, structures[:2]), features_of(a, structures[:2]), atol=1e-12, rtol=0)


def test_float32_matches_float64(esen_file, esen, structures):
    single = load_extractor(f"fairchem:{esen_file}")
    torch.testing.assert_close(features_of(single, structures).double(), features_of(esen, structures), atol=1e-4,
                               rtol=0)


def test_element_check_is_one_line(esen):
    with pytest.raises(FastCSIError, match="cannot embed atomic number.*92"):
        esen.check_elements(torch.tensor([1, 92, 6]), where="u.xyz")


def test_task_refusals(uma_file, esen_file):
    with pytest.raises(FastCSIError, match="give one as fairchem:FILE:TASK with TASK one of omat, omol"):
        load_extractor(f"fairchem:{uma_file}")
    with pytest.raises(FastCSIError, match="unknown task 'oc20'.*omat, omol"):
        load_extractor(f"fairchem:{uma_file}:oc20")
    with pytest.raises(FastCSIError, match="no dataset embedding"):
        load_extractor(f"fairchem:{esen_file}:omat")


def test_file_refusals(tmp_path, esen_file):
    with pytest.raises(FastCSIError, match="is not a file.*does not download"):
        load_extractor("fairchem:uma-s-1p2")  # a hub name, not a file: never fetched
    with pytest.raises(FastCSIError, match="give .*checkpoint file"):
        load_extractor("fairchem")
    with pytest.raises(FastCSIError, match="layer final, kind node"):
        load_extractor(f"fairchem:{esen_file}", kind="edge")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(FastCSIError, match="junk.pt: not a readable fairchem checkpoint"):
        load_extractor(f"fairchem:{junk}")
    plain = tmp_path / "weights_only.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(FastCSIError, match="not a fairchem inference checkpoint"):
        load_extractor(f"fairchem:{plain}")


class _Planted:
    """Unpickling this would run a shell command; the allow-list reader must only record it."""

    def __reduce__(self):
        return (__import__("os").system, ("touch PLANTED_BY_CHECKPOINT",))


def test_code_named_by_the_file_is_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    planted_config = tiny_backbone_config(ESEN, use_dataset_embedding=False)
    planted_config["distance_function"] = _Planted()
    bad = tmp_path / "planted.pt"
    torch.save({"model_config": {"backbone": planted_config}, "model_state_dict": {}}, bad, pickle_module=pickle)
    with pytest.raises(FastCSIError, match="not plain settings"):
        load_extractor(f"fairchem:{bad}")
    other_class = tmp_path / "other.pt"
    torch.save({"model_config": {"backbone": {"model": "os.system"}},
                "model_state_dict": {"backbone.w": torch.ones(1)}}, other_class)
    with pytest.raises(FastCSIError, match="'os.system' is not one this adapter builds"):
        load_extractor(f"fairchem:{other_class}")
    assert not (tmp_path / "PLANTED_BY_CHECKPOINT").exists()


def test_weights_that_do_not_match_the_config_are_refused(tmp_path, esen_file):
    from fastcsi.safe_pickle import load_torch_foreign, record_fields

    fields = record_fields(load_torch_foreign(esen_file))
    config = dict(fields["model_config"]["backbone"], sphere_channels=8)
    wrong = tmp_path / "wrong.pt"
    torch.save({"model_config": {"backbone": config}, "model_state_dict": fields["model_state_dict"]}, wrong)
    with pytest.raises(FastCSIError, match="(weights do not match its config|cannot build this backbone)"):
        load_extractor(f"fairchem:{wrong}")
