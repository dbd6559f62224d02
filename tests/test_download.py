"""`download()` against an http.server on 127.0.0.1 serving archives the tests build."""
import hashlib
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading

import pytest

import fakecifar
from lowlevel.datasets import cifar10
from lowlevel.datasets import DataError


def _tar(members):
    """gzip'd tar bytes from (TarInfo, bytes or None) pairs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _good_archive(tmp_path):
    src = tmp_path / "src" / "cifar-10-batches-py"
    fakecifar.write(src, "py2", per_batch=4, n_test=6)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    return buf.getvalue()


def _file(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}

    def do_GET(self):
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        if self.path.startswith("/short/"):  # claims the whole length, sends half, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """Serve _Handler.files on 127.0.0.1; yields the base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    _Handler.files = {}


def _serve(path, body):
    _Handler.files[path] = body
    return hashlib.md5(body).hexdigest()


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_archive_downloads_verifies_and_loads(server, tmp_path):
    md5 = _serve("/c.tar.gz", _good_archive(tmp_path))
    out = tmp_path / "data"
    folder = cifar10.download(out, url=server + "/c.tar.gz", md5=md5, progress=False)
    assert folder == out / "cifar-10-batches-py"
    assert cifar10.load(out).test_images.shape == (6, 32, 32, 3)
    assert _leftovers(out) == ["cifar-10-batches-py"]  # no archive or temporary folder left


def test_wrong_checksum_leaves_nothing(server, tmp_path):
    _serve("/c.tar.gz", _good_archive(tmp_path))
    out = tmp_path / "data"
    with pytest.raises(DataError, match=r"c.tar.gz: the download's MD5 is [0-9a-f]{32}, not c58f30108f718f92721af3b95e74349a"):
        cifar10.download(out, url=server + "/c.tar.gz", progress=False)  # the official MD5
    assert _leftovers(out) == []


@pytest.mark.parametrize("member, message", [
    (_file("cifar-10-batches-py/../../escaped"), "unsafe path"),
    (_file("/tmp/lowlevel-absolute-escape"), "unsafe path"),
    (_link("cifar-10-batches-py/data_batch_1", "/etc/passwd"), "a link or device"),
    (_link("cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/x", tarfile.LNKTYPE), "a link or device"),
    (_link("cifar-10-batches-py/dev", "", tarfile.CHRTYPE), "a link or device"),
    (_file("elsewhere/data_batch_1"), "outside cifar-10-batches-py/"),
])
def test_unsafe_archive_members_are_refused(server, tmp_path, member, message):
    body = _tar([_file("cifar-10-batches-py/batches.meta"), member])
    md5 = _serve("/evil.tar.gz", body)
    out = tmp_path / "a" / "data"
    with pytest.raises(DataError, match=message):
        cifar10.download(out, url=server + "/evil.tar.gz", md5=md5, progress=False)
    assert _leftovers(out) == []
    assert not (tmp_path / "escaped").exists() and not os.path.exists("/tmp/lowlevel-absolute-escape")


def test_interrupted_download_leaves_nothing_that_looks_complete(server, tmp_path):
    md5 = _serve("/short/c.tar.gz", _good_archive(tmp_path))
    out = tmp_path / "data"
    with pytest.raises(DataError, match=r"(stopped after|download failed)"):
        cifar10.download(out, url=server + "/short/c.tar.gz", md5=md5, progress=False)
    assert _leftovers(out) == []


def test_http_error_is_one_sentence(server, tmp_path):
    with pytest.raises(DataError, match=r"missing.tar.gz: the download failed \(Not Found\)"):
        cifar10.download(tmp_path / "data", url=server + "/missing.tar.gz", progress=False)


def test_cli_download_and_its_errors(server, tmp_path):
    md5 = _serve("/c.tar.gz", _good_archive(tmp_path))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = lambda *a: subprocess.run([sys.executable, "-m", "lowlevel.data", "download", *a],  # noqa: E731
                                    capture_output=True, text=True, env=env, timeout=120)
    bad = run("--dir", str(tmp_path / "d1"), "--url", server + "/c.tar.gz")  # official MD5: mismatch
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: ")
    good = run("--dir", str(tmp_path / "d2"), "--url", server + "/c.tar.gz", "--md5", md5)
    assert good.returncode == 0, good.stderr
    assert "100%" in good.stderr and "cifar-10-batches-py" in good.stdout
    assert cifar10.load(tmp_path / "d2").train_images.shape == (20, 32, 32, 3)
