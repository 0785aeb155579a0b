"""Static checks of the Dockerfile (no container engine here): it must agree with the chart."""

from __future__ import annotations

import json
import re

import chartlib

DOCKERFILE = chartlib.ROOT / "Dockerfile"
DOCKERIGNORE = chartlib.ROOT / ".dockerignore"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    ins = instructions()
    last_from = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    return ins[last_from:]


def test_multi_stage_build_with_locked_release_build():
    ins = instructions()
    froms = [rest for w, rest in ins if w == "FROM"]
    assert len(froms) == 2
    assert re.match(r"rust:\S*bookworm\S* AS builder", froms[0]) or "RUST_VERSION" in froms[0]
    assert any("cargo build --release --locked" in rest for w, rest in ins if w == "RUN")


def test_runtime_is_distroless_nonroot():
    stage = final_stage()
    assert stage[0][1].startswith("gcr.io/distroless/cc-debian12:nonroot")
    users = [rest for w, rest in stage if w == "USER"]
    assert users and users[-1].split(":")[0] == "65532"
    assert not [rest for w, rest in stage if w == "RUN"], "no shell in the runtime image"


def test_entrypoint_ports_and_env_match_the_chart(chart_defaults):
    stage = final_stage()
    (entry,) = [json.loads(rest) for w, rest in stage if w == "ENTRYPOINT"]
    assert entry == ["/usr/local/bin/prime-sigv4-proxy"]
    exposed = {int(p.split("/")[0]) for w, rest in stage if w == "EXPOSE" for p in rest.split()}
    assert exposed == {chart_defaults["ports"]["proxy"], chart_defaults["ports"]["admin"]}
    env = " ".join(rest for w, rest in stage if w == "ENV")
    assert f"PRIME_PROXY_LISTEN=0.0.0.0:{chart_defaults['ports']['proxy']}" in env
    assert f"PRIME_PROXY_ADMIN_LISTEN=0.0.0.0:{chart_defaults['ports']['admin']}" in env


def test_dockerignore_keeps_build_output_and_git_out():
    patterns = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {"target", ".git"} <= {p.strip("/").removeprefix("**/") for p in patterns}
