"""`locallearn report`: run directories → a markdown table (method × K) and a PNG of error against K."""

from __future__ import annotations

from locallearn.cli import main
from locallearn.training import RunDir, resolve, write_report
from locallearn.training.config import dump_yaml

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(path, *, accs, finished=True, **options):
    """A run directory as `locallearn train` leaves it, with the given test accuracy per epoch."""
    cfg = resolve(model="resnet32", dataset="cifar10", epochs=len(accs) if finished else len(accs) + 2,
                  out=str(path), **options)
    run = RunDir(path)
    run.write_config(dump_yaml(cfg.to_dict()))
    history = [
        {"epoch": e, "lr": 0.1, "train_loss": 1.0, "test_acc": acc, "test_loss": 0.5, "epoch_time_s": 11.0,
         "train_time_s": 10.0, "images_per_s": 500.0, "peak_memory_mb": 100.0 * cfg.net.num_modules ** -0.5,
         "peak_memory_kind": "saved_tensors"}
        for e, acc in enumerate(accs, start=1)
    ]
    run.write_metrics(history)
    if finished:
        run.write_summary({"test_acc": accs[-1]})
    return path


def make_runs(root):
    return [
        fake_run(root / "e2e", accs=[0.90, 0.93], method="e2e"),
        fake_run(root / "k2", accs=[0.88, 0.92], method="contsup", num_modules=2, context="R1E"),
        fake_run(root / "k4", accs=[0.85, 0.91], method="contsup", num_modules=4, context="R1E"),
        fake_run(root / "k4b", accs=[0.86, 0.89], method="contsup", num_modules=4, context="R1E", seed=1),
        fake_run(root / "k4i", accs=[0.80, 0.84, 0.83], method="infopro", num_modules=4),
        fake_run(root / "k8i", accs=[0.70], method="infopro", num_modules=8, finished=False),
    ]


def test_report_table_and_plot(tmp_path):
    markdown, md_path, png = write_report(make_runs(tmp_path), out=tmp_path / "report")
    assert md_path.read_text() == markdown and png.read_bytes().startswith(PNG_MAGIC)
    lines = markdown.splitlines()
    assert "## Test error (%) at the final epoch — resnet32, cifar10" in lines
    assert "| method | K=1 | K=2 | K=4 | K=8 |" in lines
    assert "| contsup R1E ce |  | 8.00 | 10.00 (n=2) |  |" in lines  # final epoch, mean of two seeds
    assert "| e2e | 7.00 |  |  |  |" in lines
    assert "| infopro contrast rec |  |  | 17.00 | 30.00* |" in lines  # final (not best) epoch; * unfinished
    run_row = next(line for line in lines if line.startswith(f"| {tmp_path / 'k4i'} |"))
    assert "| 3/3 | 17.00 | 16.00 | 50.0 (saved_tensors) | 30 s | 500 |" in run_row  # best epoch, labelled column
    assert any("best epoch selected on the test set" in line for line in lines)
    assert "![test error against K](report.png)" in lines


def test_report_command_prints_markdown(tmp_path, capsys, monkeypatch):
    runs = make_runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["report", *map(str, runs)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## Test error (%)") and "![test error against K](report.png)" in out
    assert (tmp_path / "report.png").read_bytes().startswith(PNG_MAGIC)
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "holds no run" in capsys.readouterr().err
