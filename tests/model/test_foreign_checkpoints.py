"""The paper's checkpoints: JMP Lightning files and fairchem files, written in a child process that
has the foreign classes (stand-ins under JMP's module names, pydantic's state layout, pathlib paths)
and planted payloads; read here, where none of those classes exist and no payload may run."""
import subprocess
import sys
import textwrap

import pytest
import torch

from goc_helpers import batch_of, make_model
from fastcsi.data.batch import batch_from_atoms
from fastcsi.errors import FastCSIError
from fastcsi.model import extract_features, load_backbone
from fastcsi.model.gemnet_oc.configs import BACKBONE_DEFAULTS

# Run by a child interpreter: argv = inputs.pt output.pt layout marker [--load]. It builds the file
# as JMP's pretraining run (or a fairchem trainer) would, with a payload that runs `touch marker`
# when unpickled by plain pickle, planted in the config, the callbacks and inside the state_dict.
WRITER = textwrap.dedent(r'''
    import collections, os, pathlib, sys, types
    import torch

    inputs, output, layout, marker = sys.argv[1:5]

    def module(name):
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        return sys.modules[name]

    def define(qualified, base=object, **methods):
        mod, _, name = qualified.rpartition(".")
        cls = type(name, (base,), {"__module__": mod, **methods})
        setattr(module(mod), name, cls)
        return cls

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + marker,))

    def pydantic_state(self):  # pydantic v2's BaseModel.__getstate__ layout
        return {"__dict__": dict(self.__dict__), "__pydantic_extra__": None,
                "__pydantic_fields_set__": set(self.__dict__), "__pydantic_private__": {"_is_draft_config": False}}

    def init(self, **fields):
        self.__dict__.update(fields)

    Config = define("jmp.lightning.config.TypedConfig", __init__=init, __getstate__=pydantic_state)
    Backbone = define("jmp.models.gemnet.config.BackboneConfig", Config)
    Embedding = define("jmp.tasks.pretrain.module.EmbeddingConfig", Config)
    Output = define("jmp.tasks.config.OutputConfig", Config)
    Dataset = define("jmp.tasks.pretrain.module.PretrainDatasetConfig", Config)
    Task = define("jmp.tasks.pretrain.module.TaskConfig", Config)
    Pretrain = define("jmp.tasks.pretrain.module.PretrainConfig", Config)
    EMA = define("jmp.lightning.callbacks.ema.EMA")

    if "--load" in sys.argv:  # control: plain unpickling of the file runs the payload
        torch.load(output, weights_only=False)
        sys.exit(0)

    given = torch.load(inputs, weights_only=True)
    ours, hp = given["state_dict"], given["hparams"]
    not_in_ema = lambda k: (k.endswith(("rbf.offset", "rbf.temps", "scale_factor")) or ".seq_energy_pre." in k
                            or k.startswith("task_steps"))

    if layout == "jmp":
        state = collections.OrderedDict()
        for key, value in ours.items():
            if key.startswith(("out_energy.", "out_forces.")):
                continue
            state["embedding.atom_embedding.weight" if key == "embedding.weight" else key] = value
        dtype = state["embedding.atom_embedding.weight"].dtype
        atom, edge = hp["emb_size_atom"], hp["emb_size_edge"]
        for t in range(2):  # one head pair per pretraining task, in TypedModuleList's key layout
            state[f"output.out_energy._module_list.{t}.0.weight"] = torch.randn(atom, atom, dtype=dtype)
            state[f"output.out_energy._module_list.{t}.2.weight"] = torch.randn(1, atom, dtype=dtype)
            state[f"output.out_forces._module_list.{t}.0.weight"] = torch.randn(edge, edge, dtype=dtype)
            state[f"output.out_forces._module_list.{t}.0.bias"] = torch.randn(edge, dtype=dtype)
            state[f"output.out_forces._module_list.{t}.2.weight"] = torch.randn(1, edge, dtype=dtype)
        for task in ("oc20", "ani1x"):
            state[f"task_steps._module_dict._typed_moduledict_{task}.sum_value"] = torch.tensor(1234.0)
        planted = torch.nn.Parameter(state["backbone.bases.mlp_rbf_tint.linear.weight"].clone())
        planted.evil = Payload()  # tensor attribute state: rebuilt by _rebuild_parameter_with_state
        state["backbone.bases.mlp_rbf_tint.linear.weight"] = planted
        state._metadata = collections.OrderedDict({"": {"version": 1, "evil": Payload()}})
        ema = tuple(v.detach() * 0.5 for k, v in state.items() if not not_in_ema(k))
        fields = {k: v for k, v in hp.items() if k in given["backbone_fields"]}
        tasks = [Task(name=n, train_dataset=Dataset(src=pathlib.PosixPath(f"/data/{n}/train"), metadata_path=None),
                      energy_loss_scale=1.0) for n in ("oc20", "ani1x")]
        config = Pretrain(id="abc123", name="jmp-test", backbone=Backbone(**fields, evil=Payload()),
                          embedding=Embedding(num_elements=hp["num_elements"], embedding_size=atom),
                          output=Output(num_mlps=hp["head_num_mlps"]), tasks=tasks, batch_size=4,
                          meta={"note": Payload()})
        ckpt = {
            "epoch": 3, "global_step": 1000, "pytorch-lightning_version": "2.1.3",
            "state_dict": state,
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 3}}}},
            "callbacks": {"EMA": {"decay": 0.99}, "ModelCheckpoint{}": {"best_model_path": pathlib.PosixPath("/x")},
                          "evil": Payload()},
            "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-4}],
                                  "ema": ema}],
            "lr_schedulers": [{"last_epoch": 3}],
            "hparams_name": "hparams",
            "hyper_parameters": config,
        }
    else:  # fairchem: its module names, a DDP prefix, its Gaussian basis without widths
        state = collections.OrderedDict()
        rename = {"embedding.weight": "atom_emb.embeddings.weight", "out_energy.0.weight": "out_energy.linear.weight",
                  "out_forces.0.weight": "out_forces.linear.weight"}
        for key, value in ours.items():
            if key.endswith("rbf.temps"):
                continue
            if key in rename:
                new = rename[key]
            elif key.startswith("backbone.bases."):
                new = key[len("backbone.bases."):]
            elif key.startswith(("backbone.out_mlp_E.out_mlp.", "backbone.out_mlp_F.out_mlp.")):
                new = key[len("backbone."):].replace(".out_mlp.", ".", 1)
            else:
                new = key[len("backbone."):]
            state["module." + new] = value
        model_cfg = {k: v for k, v in hp.items() if k not in ("head_num_mlps", "scale_file")}
        model_cfg.update(name="gemnet_oc", num_atoms=0, bond_feat_dim=0, scale_file=pathlib.PosixPath("/s.pt"))
        if layout == "hydra":  # fairchem 1.x: one backbone, the output MLPs and layers moved into named heads
            heads = {"out_mlp_E": "energy", "out_energy": "energy", "out_mlp_F": "forces", "out_forces": "forces"}
            state = collections.OrderedDict(
                (f"module.output_heads.{heads[k.split('.')[1]]}.{k[len('module.'):]}" if k.split(".")[1] in heads
                 else "module.backbone." + k[len("module."):], v) for k, v in state.items())
            model_cfg = {"name": "hydra", "backbone": {**model_cfg, "model": "gemnet_oc_backbone"},
                         "heads": {"energy": {"module": "gemnet_oc_energy_and_grad_force_head"}}}
        ckpt = {
            "state_dict": state, "epoch": 2, "step": 50,
            "normalizers": {"target": {"mean": torch.tensor(0.0), "std": torch.tensor(1.0)}},
            "config": {"model": model_cfg, "cmd": {"checkpoint_dir": "/ckpt", "evil": Payload()},
                       "optim": {"batch_size": 4}},
            "val_metrics": {"energy_mae": {"metric": 0.1}},
            "ema": {"decay": 0.999, "num_updates": 50, "collected_params": [],
                    "shadow_params": [v * 0.5 for k, v in state.items() if not not_in_ema(k[len("module."):])]},
            "amp": None, "best_val_metric": 0.1, "primary_metric": "forces_mae",
        }
    torch.save(ckpt, output, _use_new_zipfile_serialization=not output.endswith(".legacy"))
''')

FIELDS = sorted(BACKBONE_DEFAULTS)


def direct_model(dtype=torch.float64):
    # JMP's graph settings (12 Å, 30 neighbours): what a file that records none of them is read with
    model = make_model(direct_forces=True, cutoff=12.0, absolute_rbf_cutoff=12.0)
    return model.to(dtype)


def write_foreign(tmp_path, model, layout, name, legacy=False):
    """(file, marker) for ``model`` in ``layout`` (jmp, fairchem, hydra), zip or torch's legacy format."""
    inputs = tmp_path / f"{name}.inputs.pt"
    torch.save({"state_dict": model.state_dict(), "hparams": model.hparams, "backbone_fields": FIELDS}, inputs)
    (tmp_path / "writer.py").write_text(WRITER)
    out, marker = tmp_path / f"{name}.ckpt{'.legacy' if legacy else ''}", tmp_path / f"{name}.marker"
    subprocess.run([sys.executable, str(tmp_path / "writer.py"), str(inputs), str(out), layout, str(marker)],
                   check=True, capture_output=True, timeout=120)
    return out, marker


@pytest.fixture(scope="module")
def jmp64(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jmp64")
    model = direct_model()
    return (model, *write_foreign(tmp, model, "jmp", "jmp64"))


@pytest.fixture(scope="module")
def jmp32(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jmp32")
    model = direct_model(torch.float32)
    return (model, *write_foreign(tmp, model, "jmp", "jmp32"))


@pytest.fixture(scope="module")
def fair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fair")
    model = make_model(direct_forces=True, head_num_mlps=1)
    return (model, *write_foreign(tmp, model, "fairchem", "fair"))


@pytest.mark.parametrize("legacy", [False, True])
def test_planted_payloads_are_live_but_never_run(jmp64, tmp_path, legacy):
    from fastcsi.safe_pickle import Record, load_torch_foreign, record_fields, records_in

    model = jmp64[0]
    # its own marker: the control runs it
    path, marker = write_foreign(tmp_path, model, "jmp", "control", legacy=legacy)
    ckpt = load_torch_foreign(path)
    assert not marker.exists()
    commands = [r.args for r in records_in(ckpt) if r.name == "system"]
    # config field, config meta, callbacks, state_dict metadata (a tensor's attribute state is not kept)
    assert len(commands) == 4 and all(c == (f"touch {marker}",) for c in commands)
    config = ckpt["hyper_parameters"]
    assert isinstance(config, Record) and config.qualname == "jmp.tasks.pretrain.module.PretrainConfig"
    backbone = record_fields(record_fields(config)["backbone"])
    assert backbone["num_blocks"] == model.hparams["num_blocks"]
    task = record_fields(record_fields(config)["tasks"][0])
    assert record_fields(task["train_dataset"])["src"].qualname == "pathlib.PosixPath"
    # the control: plain unpickling of the same file does run the payload
    subprocess.run([sys.executable, str(tmp_path / "writer.py"), "-", str(path), "jmp", str(marker), "--load"],
                   check=True, capture_output=True, timeout=120)
    assert marker.exists()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_jmp_pretraining_layout_without_base(tmp_path, structures, dtype, jmp64, jmp32):
    model, path, marker = jmp64 if dtype == torch.float64 else jmp32
    loaded = load_backbone(path).eval()
    assert not marker.exists()
    assert loaded.dtype == dtype and loaded.hparams == model.hparams
    info = loaded.load_info
    assert info["layout"] == "jmp" and info["hparams"] == "file" and info["graph_settings"] == "JMP defaults"
    assert info["heads_initialized"] and info["weights"] == "raw"
    assert info["dropped"] == {"pretraining heads (JMP's per-task output.out_energy / output.out_forces)": 10,
                               "task_steps (JMP's per-task step counters)": 2}
    assert "task_steps._module_dict._typed_moduledict_ani1x.sum_value" in info["dropped_keys"]
    assert "evil" in info["ignored_settings"]
    # the raw state_dict's features equal those of the same weights loaded as a plain state_dict
    plain = {k: v for k, v in model.state_dict().items()}
    torch.save(plain, tmp_path / "plain.pt")
    reference = load_backbone(tmp_path / "plain.pt", **model.hparams).eval()
    batch = batch_from_atoms([structures["slab"], structures["molecule"]], dtype=dtype)
    got, want = extract_features(loaded, batch), extract_features(reference, batch)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10 if dtype == torch.float64 else 0)


def test_jmp_ema_weights(jmp64):
    model, path, marker = jmp64
    raw = model.state_dict()
    ema = load_backbone(path, weights="ema")
    assert ema.load_info["weights"] == "ema" and not marker.exists()
    state = ema.state_dict()
    for key, value in state.items():
        if key.startswith(("out_energy.", "out_forces.")):
            continue
        frozen = key.endswith(("rbf.offset", "rbf.temps", "scale_factor"))
        torch.testing.assert_close(value, raw[key] if frozen else raw[key] * 0.5, rtol=0, atol=0, msg=key)
    # seq_energy_pre is the same module as layers: it holds the EMA value too
    alias = next(k for k in state if ".seq_energy_pre." in k)
    torch.testing.assert_close(state[alias], raw[alias] * 0.5, rtol=0, atol=0)


def test_fairchem_layout_without_base(structures, fair):
    model, path, marker = fair
    loaded = load_backbone(path).eval()
    assert not marker.exists()
    info = loaded.load_info
    assert info["layout"] == "fairchem" and info["hparams"] == "file" and info["graph_settings"] == "file"
    assert not info["heads_initialized"] and info["dropped"] == {}
    assert info["filled_buffers"] and all(k.endswith("rbf.temps") for k in info["filled_buffers"])
    assert {k: v for k, v in loaded.hparams.items() if k != "scale_file"} == \
        {k: v for k, v in model.hparams.items() if k != "scale_file"}
    batch = batch_of(structures["bulk"])
    torch.testing.assert_close(extract_features(loaded, batch), extract_features(model, batch), rtol=0, atol=1e-10)
    ema = load_backbone(path, weights="ema").state_dict()
    raw = model.state_dict()
    torch.testing.assert_close(ema["backbone.int_blocks.0.dense_ca.linear.weight"],
                               raw["backbone.int_blocks.0.dense_ca.linear.weight"] * 0.5, rtol=0, atol=0)
    torch.testing.assert_close(ema["out_energy.0.weight"], raw["out_energy.0.weight"] * 0.5, rtol=0, atol=0)


def test_bare_state_dict_hyperparameters_inferred(tmp_path, structures):
    model = make_model(direct_forces=False, cutoff=12.0, absolute_rbf_cutoff=12.0, num_concat=2,
                       num_atom_emb_layers=0, quad_interaction=False)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    loaded = load_backbone(tmp_path / "bare.pt").eval()
    assert loaded.load_info["hparams"] == "inferred from tensor shapes"
    assert "absolute_rbf_cutoff" in loaded.load_info["assumed_hparams"]
    unused = {"emb_size_quad_in", "emb_size_quad_out", "emb_size_sbf"}  # no quadruplet interaction: no shapes
    assert {k: v for k, v in loaded.hparams.items() if k not in unused} == \
        {k: v for k, v in model.hparams.items() if k not in unused}
    batch = batch_of(structures["molecule"])
    torch.testing.assert_close(extract_features(loaded, batch), extract_features(model, batch), rtol=0, atol=0)

    # An argument (as fine-tuning's task overrides always pass) refines the inferred architecture
    # instead of replacing it with GemNet-OC's defaults.
    refined = load_backbone(tmp_path / "bare.pt", absolute_rbf_cutoff=12.0).eval()
    assert refined.load_info["hparams"] == "inferred from tensor shapes, with arguments"
    assert "absolute_rbf_cutoff" not in refined.load_info["assumed_hparams"]
    torch.testing.assert_close(extract_features(refined, batch), extract_features(model, batch), rtol=0, atol=0)


def test_weights_errors(tmp_path, jmp64):
    model = jmp64[0]
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(FastCSIError, match="bare.pt: --weights ema: a bare state_dict holds no EMA"):
        load_backbone(tmp_path / "bare.pt", weights="ema")
    torch.save({"state_dict": model.state_dict(), "optimizer_states": [{"ema": (torch.zeros(1),)}]},
               tmp_path / "short.ckpt")
    with pytest.raises(FastCSIError, match=r"short.ckpt: --weights ema: 1 EMA tensors for \d+ parameters"):
        load_backbone(tmp_path / "short.ckpt", weights="ema")
    with pytest.raises(FastCSIError, match="choose raw or ema"):
        load_backbone(tmp_path / "bare.pt", weights="best")


def test_a_file_cannot_make_the_reader_allocate_by_calling_torch_tensor(tmp_path):
    import pickle

    from fastcsi.safe_pickle import load_torch_foreign

    class Alloc:  # pickles as torch.Tensor(2**40): a terabyte of float32 if it were ever called
        def __reduce__(self):
            return torch.Tensor, (2**40,)

    path = tmp_path / "alloc.pt"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": Alloc()}, fh, protocol=2)
    with pytest.raises(FastCSIError, match="alloc.pt: not a readable checkpoint .*torch.Tensor called by the file"):
        load_torch_foreign(path)


def test_damaged_file_is_one_line(jmp64, tmp_path):
    data = jmp64[1].read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(FastCSIError, match=r"cut.ckpt: not a readable checkpoint") as info:
        load_backbone(tmp_path / "cut.ckpt")
    assert "\n" not in str(info.value)
    (tmp_path / "junk.ckpt").write_bytes(b"\x80\x02}q\x00(X\x01")
    with pytest.raises(FastCSIError, match="junk.ckpt: not a readable checkpoint"):
        load_backbone(tmp_path / "junk.ckpt")


def test_finetune_starts_from_either_weight_set(jmp64):
    from fastcsi.train.backbones import load_pretrained
    from fastcsi.train.finetune import pretrain_record

    model, path, marker = jmp64
    key = "backbone.int_blocks.0.dense_ca.linear.weight"
    raw, ema = (load_pretrained(path, 0, {}, weights=w) for w in ("raw", "ema"))
    torch.testing.assert_close(raw.state_dict()[key], model.state_dict()[key], rtol=0, atol=0)
    torch.testing.assert_close(ema.state_dict()[key], model.state_dict()[key] * 0.5, rtol=0, atol=0)
    torch.testing.assert_close(raw.state_dict()["out_energy.0.weight"], ema.state_dict()["out_energy.0.weight"])
    # the run's record of what the backbone was pretrained on reads the Lightning file too
    assert pretrain_record(path)["kind"] == "foreign" and not marker.exists()


def test_fingerprint_names_the_weight_set_not_the_dropped_keys(jmp64, tmp_path):
    from fastcsi.model import extractor_fingerprint

    model, path, marker = jmp64
    raw = load_backbone(path)
    # the same weights without the task steps and pretraining heads: the same fingerprint
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith(("out_energy.", "out_forces."))},
               tmp_path / "backbone_only.pt")
    bare = load_backbone(tmp_path / "backbone_only.pt", **model.hparams)
    # and loading a head-less file twice (fresh heads drawn each time) names the same features
    assert extractor_fingerprint(raw) == extractor_fingerprint(bare) == extractor_fingerprint(load_backbone(path))
    ema = load_backbone(path, weights="ema")
    ema.load_state_dict(raw.state_dict())  # even identical weights: the weight set is part of the name
    assert extractor_fingerprint(ema) != extractor_fingerprint(raw)


def test_select_reads_the_paper_layouts_without_base(jmp64, jmp32, fair, tmp_path):
    import json

    from click.testing import CliRunner

    from fastcsi.cli.app import cli
    from fastcsi.data.demo import demo_downstream, demo_paths

    files = {"jmp float64": jmp64[1:], "jmp float32": jmp32[1:], "fairchem": fair[1:]}
    upstream = demo_paths()["upstream_organic"]
    for k, (label, (path, marker)) in enumerate(files.items()):
        weights = "ema" if label == "fairchem" else "raw"
        out = tmp_path / f"run{k}"
        result = CliRunner().invoke(cli, ["select", "--checkpoint", str(path), "--weights", weights, "--downstream",
                                          str(demo_downstream()), "--upstream", str(upstream), "--samples", "3",
                                          "--seeds", "0", "--threads", "1", "--no-cache", "--quiet", "-o", str(out)])
        assert result.exit_code == 0, (label, result.output)
        settings = json.loads((out / "csi.json").read_text())["settings"]
        assert settings["weights"] == weights and settings["base"] is None and settings["hparams_from"] == "file"
        if label.startswith("jmp"):
            assert settings["graph_settings"] == "JMP defaults" and sum(settings["dropped_keys"].values()) == 12
        assert not marker.exists()
    result = CliRunner().invoke(cli, ["stats", "compute", str(demo_downstream()), "-o", str(tmp_path / "d.npz"),
                                      "--checkpoint", str(jmp64[1]), "--base", "gemnet-oc-x"])
    assert result.exit_code == 2 and "--base 'gemnet-oc-x': unknown GemNet-OC config" in result.output


def test_fairchem_hydra_layout(tmp_path, structures):
    model = make_model(direct_forces=True, head_num_mlps=1)
    path, marker = write_foreign(tmp_path, model, "hydra", "hydra")
    loaded = load_backbone(path).eval()
    assert loaded.load_info["layout"] == "fairchem" and not loaded.load_info["heads_initialized"]
    batch = batch_of(structures["molecule"])
    torch.testing.assert_close(extract_features(loaded, batch), extract_features(model, batch), rtol=0, atol=1e-10)
    torch.testing.assert_close(loaded.state_dict()["out_forces.0.weight"], model.state_dict()["out_forces.0.weight"])


class _Plain:
    """An ordinary object: pickled by protocols 0/1 through copyreg._reconstructor, later ones by NEWOBJ."""

    def __init__(self, payload):
        self.payload, self.size = payload, 3


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 1, 2, 4, 5])
def test_every_pickle_protocol_gives_records(tmp_path, protocol):
    import pickle

    from fastcsi.safe_pickle import Record, loads, record_fields

    marker = tmp_path / "marker"
    obj = loads(pickle.dumps({"x": _Plain(_Payload(marker)), "s": {1, 2}, "b": b"\x00\xff", "c": 1 + 2j},
                             protocol=protocol))
    assert not marker.exists()
    plain = obj["x"]
    assert isinstance(plain, Record) and plain.name == "_Plain" and record_fields(plain)["size"] == 3
    payload = record_fields(plain)["payload"]
    assert payload.name == "system" and payload.args == (f"touch {marker}",)
    assert obj["s"] == {1, 2} and obj["b"] == b"\x00\xff" and obj["c"] == 1 + 2j


def test_jmp_graph_defaults_are_warned_once_per_file(jmp32):
    import warnings

    from fastcsi.model.gemnet_oc import checkpoint

    checkpoint._WARNED_GRAPH_DEFAULTS.discard(str(jmp32[1].resolve()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            load_backbone(jmp32[1])
    said = [str(w.message) for w in caught if "graph settings" in str(w.message)]
    assert len(said) == 1 and "JMP's defaults (cutoff 12 Å for every graph, 30/20/8/1000 neighbours)" in said[0]
