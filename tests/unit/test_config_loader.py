"""Configuration loading: every problem reported at once, each with its exact path."""

from __future__ import annotations

from pathlib import Path

import pytest

from extauthz.config.loader import load_config, render_location
from extauthz.errors import ConfigError

HASH = "sha256:" + "ab" * 32


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def issues_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(i) for i in info.value.issues]


def test_render_location() -> None:
    assert render_location(("routes", 2, "authn", 0, "jwt", "issuer")) == (
        "routes[2].authn[0].jwt.issuer"
    )
    assert render_location(()) == ""


def test_minimal_valid_config(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, "routes:\n- name: pub\n  public: true\n"))
    assert loaded.main.routes[0].name == "pub"
    assert len(loaded.digest) == 64


def test_missing_issuer_names_exact_path(tmp_path: Path) -> None:
    text = """
routes:
- {name: a, public: true}
- {name: b, public: true}
- name: c
  authn:
  - jwt:
      audiences: [x]
      algorithms: [RS256]
      jwks: {url: "https://idp/jwks"}
"""
    assert "routes[2].authn[0].jwt.issuer: is required" in issues_of(write(tmp_path, text))


def test_every_error_reported_at_once(tmp_path: Path) -> None:
    text = """
settings: {unmatched: maybe, bogus: 1}
consumers:
- name: alice
  keys:
  - {id: k1, hash: "plaintext-key"}
routes:
- name: r
  match: {path: "no-slash", methods: ["G3T"]}
- name: r2
"""
    issues = issues_of(write(tmp_path, text))
    joined = "\n".join(issues)
    assert "settings.unmatched" in joined
    assert "settings.bogus: unknown key" in joined
    assert "consumers[0].keys[0].hash" in joined and "plaintext" in joined
    assert "routes[0].match" in joined
    assert "routes[1]: authn: required (or set public: true)" in joined
    assert len(issues) >= 5


def test_hmac_algorithms_and_none_refused_for_jwt(tmp_path: Path) -> None:
    for alg in ("none", "HS256"):
        text = f"""
routes:
- name: r
  authn:
  - jwt: {{issuer: i, audiences: [a], algorithms: [{alg}], jwks: {{url: "https://x/j"}}}}
"""
        joined = "\n".join(issues_of(write(tmp_path, text)))
        assert "routes[0].authn[0].jwt.algorithms[0]" in joined


def test_jwks_needs_exactly_one_source(tmp_path: Path) -> None:
    text = """
authenticators:
  idp:
    jwt: {issuer: i, audiences: [a], algorithms: [RS256], jwks: {url: "https://x", file: j}}
routes: []
"""
    joined = "\n".join(issues_of(write(tmp_path, text)))
    assert "authenticators.idp.jwt.jwks: set exactly one of" in joined


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    issues = issues_of(write(tmp_path, "routes: [\n  - {name: x\n"))
    assert any("not valid YAML (line" in i for i in issues)


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    assert any("must be a mapping" in i for i in issues_of(write(tmp_path, "- a\n- b\n")))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    issues = issues_of(tmp_path / "nope.yaml")
    assert issues and "cannot read file" in issues[0]


def test_include_directory_and_error_names_file(tmp_path: Path) -> None:
    write(tmp_path, "include: [routes.d]\n")
    write(tmp_path, "routes:\n- {name: ok, public: true}\n", "routes.d/a.yaml")
    write(tmp_path, "routes:\n- {name: bad}\n", "routes.d/b.yml")
    write(tmp_path, "not: [a config", "routes.d/ignored.txt")
    issues = issues_of(tmp_path / "config.yaml")
    assert issues == ["routes.d/b.yml: routes[0]: authn: required (or set public: true)"]


def test_include_missing_path(tmp_path: Path) -> None:
    issues = issues_of(write(tmp_path, "include: [nowhere]\n"))
    assert issues == ["include[0]: no such file or directory: nowhere"]


def test_include_loads_fragments_in_order(tmp_path: Path) -> None:
    write(tmp_path, "include: [d]\n")
    write(tmp_path, "routes:\n- {name: two, public: true}\n", "d/2.yaml")
    write(tmp_path, "routes:\n- {name: one, public: true}\n", "d/1.yaml")
    loaded = load_config(tmp_path / "config.yaml")
    assert [f.source for f in loaded.fragments] == ["d/1.yaml", "d/2.yaml"]


def test_key_expiry_needs_timezone(tmp_path: Path) -> None:
    text = f"""
consumers:
- name: a
  keys: [{{id: k, hash: "{HASH}", expires_at: "2030-01-01T00:00:00"}}]
"""
    assert any("timezone" in i for i in issues_of(write(tmp_path, text)))


def test_includes_resolve_against_the_symlink_not_its_target(tmp_path: Path) -> None:
    """Kubernetes mounts: /etc/x/config.yaml -> ..data/config.yaml; includes are relative to
    /etc/x, where the operator wrote them, not to the timestamped target directory."""
    data = tmp_path / "mount" / "..2026_11_23"
    data.mkdir(parents=True)
    (data / "config.yaml").write_text("include: [../routes]\n")
    (tmp_path / "routes").mkdir()
    (tmp_path / "routes" / "r.yaml").write_text("routes:\n- {name: r, public: true}\n")
    link = tmp_path / "mount" / "config.yaml"
    link.symlink_to(data / "config.yaml")
    loaded = load_config(link)
    assert [f.data.routes[0].name for f in loaded.fragments] == ["r"]
