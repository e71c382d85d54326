"""select / stats compute take --energy-unit and --force-unit like every command that opens datasets:
recorded in the reading of the file (its fingerprint), so pretrain --from-selection with the same
options finds the same datasets (issue 25)."""
from click.testing import CliRunner

from fastcsi.cli import cli
from fastcsi.stats import load_stats


def test_stats_compute_records_the_unit_options(tiny_data, tmp_path):
    outputs = {}
    for name, extra in (("plain", []), ("kcal", ["--energy-unit", "kcal/mol", "--force-unit", "kcal/mol/Å"])):
        outputs[name] = tmp_path / f"{name}.npz"
        result = CliRunner().invoke(cli, ["stats", "compute", str(tiny_data["organic"]), "-o", str(outputs[name]),
                                          "--samples", "4", "--quiet", *extra])
        assert result.exit_code == 0, result.output
    plain, kcal = (load_stats(outputs[k]).metadata for k in ("plain", "kcal"))
    assert plain["dataset"] != kcal["dataset"]  # the dataset fingerprint holds the reader options
    assert plain["extractor"] == kcal["extractor"]  # features themselves do not depend on labels
