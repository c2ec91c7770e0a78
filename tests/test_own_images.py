"""README "Your own images": a folder of good images only -> `dpdiff train` with a calibration hold-out ->
`dpdiff predict` and `dpdiff serve`, end to end on generated images, with the README's commands as written."""

from __future__ import annotations

import csv
import io
import re
import shlex
import shutil
from pathlib import Path

import pytest
from PIL import Image
from starlette.testclient import TestClient

from dpdiff.cli import main
from dpdiff.serve.app import ServeSettings, create_app
from dpdiff.serve.model import ServedModel

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- own-images:start -->\s*```bash\n(.*?)```\s*<!-- own-images:end -->", re.S)


def _readme_commands() -> list[list[str]]:
    match = BLOCK.search((REPO / "README.md").read_text(encoding="utf-8"))
    assert match, "README.md has no own-images block"
    lines = [line.split("#")[0].strip() for line in match.group(1).splitlines()]
    return [shlex.split(line) for line in lines if line]


@pytest.mark.integration
def test_good_images_only_to_decisions(tmp_path, tiny_dataset, tiny_set_args, monkeypatch, capsys):
    # "my camera's good images": the normal images of one generated category, no defects, no masks anywhere
    generated = tmp_path / "generated"
    cat = tiny_dataset(generated, num_categories=1, train_per_category=16, test_good_per_category=2)[0]
    good = tmp_path / "camera" / "good"
    shutil.copytree(generated / cat / "train" / "good", good)
    new = tmp_path / "camera" / "new"
    shutil.copytree(generated / cat / "test", new)  # good and defective images to judge
    monkeypatch.chdir(tmp_path)
    commands = _readme_commands()
    assert [c[0] for c in commands] == ["mkdir", "cp", "dpdiff", "dpdiff", "dpdiff"], commands
    for cmd in commands:
        cmd = [a.replace("/path/to/camera", str(tmp_path / "camera")) for a in cmd]
        if cmd[0] == "mkdir":
            for folder in cmd[2:]:
                Path(folder).mkdir(parents=True)
        elif cmd[0] == "cp":
            for src in sorted(Path(cmd[1].rsplit("/", 1)[0]).glob(cmd[1].rsplit("/", 1)[1])):
                shutil.copy(src, cmd[2])
        elif cmd[1] == "train":  # the README's training, shrunk to the tiny model; the hold-out stays as written
            sets = cmd[cmd.index("--set") + 1 :] if "--set" in cmd else []
            head = cmd[1 : cmd.index("--set")] if "--set" in cmd else cmd[1:]
            held = [s for s in sets if s.startswith("train.calibration")]
            assert held, "the README trains with a calibration hold-out"
            # 16 images: a 25 % hold-out keeps 4, enough for a 20 % false-alarm rate (the README's own rate
            # needs the hundred images it asks for)
            held = ["train.calibration_fraction=0.25", "train.calibration_fpr=0.2"]
            assert main([*head, "--set", *tiny_set_args, "inference.antithetic=false", *held]) == 0
        elif cmd[1] == "predict":
            assert main(cmd[1:]) == 0
        elif cmd[1] == "serve":
            run = Path(cmd[2])
    out = capsys.readouterr().out
    assert "defect masks to" in out  # calibrated at training: decisions and masks
    rows = list(csv.DictReader(open(tmp_path / "predictions" / "scores.csv")))
    assert len(rows) == len(list(new.rglob("*.png"))) and all(r["is_anomalous"] in ("true", "false") for r in rows)
    # serve: the same run folder answers /predict with a decision
    with TestClient(create_app(ServedModel.load(run, device="cpu"), ServeSettings(max_wait_ms=1))) as client:
        buf = io.BytesIO()
        Image.open(sorted(new.rglob("*.png"))[0]).save(buf, format="PNG")
        r = client.post("/predict", content=buf.getvalue())
        assert r.status_code == 200 and r.json()["decision"] in ("normal", "anomalous")
