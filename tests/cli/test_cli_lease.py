"""``kiln lease acquire|renew|release|list``."""

from __future__ import annotations

from pathlib import Path

from tests.cli.runner import assert_one_error_line, json_lines, kiln


def test_lease_commands(tmp_path: Path) -> None:
    data = tmp_path / "data"
    taken = kiln(data, "lease", "acquire", "job", "--holder", "w1", "--ttl", "60")
    assert taken.exit_code == 0, taken.stderr
    lease = json_lines(taken.stdout)[0]
    assert (lease["key"], lease["holder"], lease["token"]) == ("job", "w1", 1)
    held = kiln(data, "lease", "acquire", "job", "--holder", "w2")
    assert_one_error_line(held, 1, "held by 'w1'")
    renewed = kiln(data, "lease", "renew", "job", "--holder", "w1", "--token", "1", "--ttl", "5")
    assert json_lines(renewed.stdout)[0]["expires_at"] < lease["expires_at"]
    listed = json_lines(kiln(data, "lease", "list").stdout)
    assert [(x["key"], x["token"]) for x in listed] == [("job", 1)]
    lost = kiln(data, "lease", "renew", "job", "--holder", "w1", "--token", "7")
    assert_one_error_line(lost, 1, "lost")
    released = kiln(data, "lease", "release", "job", "--holder", "w1", "--token", "1")
    assert json_lines(released.stdout) == [{"released": True}]
    assert json_lines(kiln(data, "lease", "list").stdout) == []
    again = json_lines(kiln(data, "lease", "acquire", "job", "--holder", "w2").stdout)[0]
    assert again["token"] == 2
