"""C2PA content credentials (sciddpm.credentials): signed, read back, broken by edits, bad signers refused."""

from __future__ import annotations

import json
import re
import sys
import zlib
from pathlib import Path

import pytest
import torch

from sciddpm.cli import main
from sciddpm.credentials import C2paSigner, read_credentials, sign_png, throwaway_signer
from sciddpm.plot import save_grid
from sciddpm.provenance import DIGITAL_SOURCE_TYPE, PNG_KEY, record

pytest.importorskip("c2pa", reason="the provenance extra (c2pa-python) is part of the test extra")


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> C2paSigner:
    return throwaway_signer(tmp_path_factory.mktemp("keys"))


def _grid(path: Path) -> dict:
    made = record(None, sampler="ddim", steps=3, seed=7)
    save_grid(torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)), path, provenance=made)
    return made


def _edit_pixels(path: Path) -> None:
    """Flip one byte of the first IDAT chunk's data and fix its CRC: a valid PNG with other pixels."""
    data = bytearray(path.read_bytes())
    at = data.index(b"IDAT")
    length = int.from_bytes(data[at - 4 : at], "big")
    data[at + 4 + length // 2] ^= 0xFF
    crc = zlib.crc32(bytes(data[at : at + 4 + length]))
    data[at + 4 + length : at + 8 + length] = crc.to_bytes(4, "big")
    path.write_bytes(bytes(data))


def test_a_signed_grid_says_it_is_synthetic_and_which_run_made_it(tmp_path: Path, signer: C2paSigner) -> None:
    from PIL import Image

    path = tmp_path / "grid.png"
    made = _grid(path)
    path.chmod(0o644)
    sign_png(path, made, signer)
    assert path.stat().st_mode & 0o777 == 0o644  # a shared folder's readers can still open it
    read = read_credentials(path)
    assert read["digital_source_type"] == DIGITAL_SOURCE_TYPE
    assert read["record"] == json.loads(json.dumps(made)) and read["record"]["seed"] == 7
    assert read["signer"] == "sciddpm test signer"
    # The signature checks out; only the throwaway CA is outside the reader's trust list.
    assert read["validation"] == ["signingCredential.untrusted"]
    assert json.loads(Image.open(path).text[PNG_KEY])["seed"] == 7  # the text chunks are kept

    _edit_pixels(path)
    assert any("mismatch" in code for code in read_credentials(path)["validation"])


def test_bad_signers_and_files_get_clear_errors_and_lose_nothing(tmp_path: Path, signer: C2paSigner) -> None:
    path = tmp_path / "grid.png"
    made = _grid(path)
    before = path.read_bytes()
    other = throwaway_signer(tmp_path / "other")
    with pytest.raises(RuntimeError, match="signature does not match"):
        sign_png(path, made, C2paSigner(signer.key, other.certificate))  # key of another certificate
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "other"]
    with pytest.raises(ValueError, match="no C2PA manifest could be read"):
        read_credentials(path)
    with pytest.raises(FileNotFoundError, match="private key"):
        C2paSigner(tmp_path / "missing.key", signer.certificate)
    with pytest.raises(ValueError, match="unknown C2PA signing algorithm 'rsa'"):
        C2paSigner(signer.key, signer.certificate, "rsa")
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(ValueError, match="is not a PNG"):
        sign_png(tmp_path / "fake.png", made, signer)
    with pytest.raises(FileNotFoundError, match="write the PNG before signing it"):
        sign_png(tmp_path / "missing.png", made, signer)


def test_without_c2pa_python_the_error_says_what_to_install(
    tmp_path: Path, signer: C2paSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "grid.png"
    made = _grid(path)
    monkeypatch.setitem(sys.modules, "c2pa", None)
    with pytest.raises(ImportError, match=r"pip install 'sciddpm\[provenance\]'"):
        sign_png(path, made, signer)


def test_cli_sample_signs_png_output_and_checks_the_signer_before_sampling(
    tmp_path: Path, tiny_pipeline, signer: C2paSigner, capsys: pytest.CaptureFixture
) -> None:
    tiny_pipeline.save(tmp_path / "model")
    base = ["sample", str(tmp_path / "model"), "--n", "2", "--steps", "1", "--no-progress"]
    keys = ["--c2pa-key", str(signer.key), "--c2pa-cert", str(signer.certificate)]
    assert main([*base, "--out", str(tmp_path / "s.png"), *keys]) == 0
    read = read_credentials(tmp_path / "s.png")
    assert read["record"]["steps"] == 1 and read["record"]["weights_sha256"]
    bad = ["--c2pa-key", str(signer.key), "--c2pa-cert", str(throwaway_signer(tmp_path / "k2").certificate)]
    for out, flags, message in (
        ("t.png", keys[:2], "needs both --c2pa-key and --c2pa-cert"),
        ("t.png", ["--c2pa-alg", "es384"], "--c2pa-alg goes with --c2pa-key and --c2pa-cert"),
        ("t.npy", keys, "C2PA credentials go into PNG output"),
        ("t.png", bad, "C2PA signing of .* with key .* failed: .*signature does not match"),
    ):
        assert main([*base, "--out", str(tmp_path / out), *flags]) != 0
        assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "t.png").exists() and not (tmp_path / "t.npy").exists()
