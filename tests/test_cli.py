"""The ``vitkd-zoo`` entry point and the ``models`` table."""
import subprocess
import sys

from vitkd_zoo.cli import main
from vitkd_zoo.commands.models import format_table, model_table


def test_models_table_reports_params_gmacs_and_speed_against_the_baseline():
    rows = model_table(["deit_tiny_patch16_224", "deit_tiny_lift", "deit_tiny_widelast"], batch_size=2, seconds=0.3,
                       img_size=32, patch_size=8)
    by_name = {r["model"]: r for r in rows}
    assert by_name["deit_tiny_lift"]["params"] - by_name["deit_tiny_patch16_224"]["params"] == 5_983_528 - 5_717_416
    assert by_name["deit_tiny_widelast"]["gmacs"] > by_name["deit_tiny_lift"]["gmacs"] > by_name["deit_tiny_patch16_224"]["gmacs"]
    assert all(r["img_per_s"] > 0 for r in rows)
    table = format_table(rows)
    base = by_name["deit_tiny_patch16_224"]
    assert table.splitlines()[2].startswith(f"| deit_tiny_patch16_224 | {base['params']:,} |") and "1.000x" in table


def test_console_script_help_lists_commands(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "models" in out and "quickstart" in out
    done = subprocess.run([sys.executable, "-m", "vitkd_zoo.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("vitkd-zoo ")
