"""?glob=, ?since=, ?until=, ?max_size=: what a selection picks, and the values it refuses."""

from urllib.parse import parse_qsl

import pytest
from werkzeug.datastructures import MultiDict

from wsgi_stream.errors import BadRequest
from wsgi_stream.selection import Selection, below, parse_selection, parse_size, parse_time

NOW = 1_800_000_000.0


@pytest.mark.parametrize("selection, path, size, mtime, picked", [
    pytest.param(Selection(), "a/b.log", 10, NOW, True, id="empty-picks-everything"),
    pytest.param(Selection(globs=("*.log",)), "deep/er/x.log", 1, NOW, True, id="glob-without-slash-matches-name-anywhere"),
    pytest.param(Selection(globs=("*.log",)), "x.log.gz", 1, NOW, False, id="glob-matches-whole-name"),
    pytest.param(Selection(globs=("app/*.log",)), "app/sub/x.log", 1, NOW, True, id="glob-with-slash-star-crosses-folders"),
    pytest.param(Selection(globs=("app/*.log",)), "web/x.log", 1, NOW, False, id="glob-with-slash-anchored-below-folder"),
    pytest.param(Selection(globs=("*.txt", "*.log")), "x.log", 1, NOW, True, id="any-pattern-picks"),
    pytest.param(Selection(globs=("X.LOG",)), "x.log", 1, NOW, False, id="glob-is-case-sensitive"),
    pytest.param(Selection(since=NOW - 3600), "x", 1, NOW - 3599, True, id="since-inclusive-newer"),
    pytest.param(Selection(since=NOW - 3600), "x", 1, NOW - 3601, False, id="since-older-left-out"),
    pytest.param(Selection(until=NOW - 3600), "x", 1, NOW - 3600, True, id="until-inclusive"),
    pytest.param(Selection(until=NOW - 3600), "x", 1, NOW, False, id="until-newer-left-out"),
    pytest.param(Selection(since=NOW - 10), "x", 1, None, False, id="time-selection-needs-mtime"),
    pytest.param(Selection(max_size=100), "x", 100, NOW, True, id="max-size-inclusive"),
    pytest.param(Selection(max_size=100), "x", 101, NOW, False, id="max-size-larger-left-out"),
])
def test_picks(selection, path, size, mtime, picked):
    assert selection.picks(path, size, mtime) is picked


@pytest.mark.parametrize("value, expected", [
    pytest.param("1h", NOW - 3600, id="hours-ago"),
    pytest.param("30m", NOW - 1800, id="minutes-ago"),
    pytest.param("2d", NOW - 2 * 86400, id="days-ago"),
    pytest.param("1w", NOW - 7 * 86400, id="weeks-ago"),
    pytest.param("1.5h", NOW - 5400, id="fraction-ago"),
    pytest.param("1700000000", 1_700_000_000.0, id="unix-seconds"),
    pytest.param("2023-11-14T22:13:20Z", 1_700_000_000.0, id="rfc3339-z"),
    pytest.param("2023-11-14T23:13:20+01:00", 1_700_000_000.0, id="rfc3339-offset"),
])
def test_times(value, expected):
    assert parse_time(value, NOW, "since") == pytest.approx(expected)


@pytest.mark.parametrize("value", ["yesterday", "1y", "-1h", "2023-13-01T00:00:00Z", ""])
def test_bad_times_are_400(value):
    with pytest.raises(BadRequest) as err:
        parse_time(value, NOW, "since")
    assert err.value.code == "bad_selection"


@pytest.mark.parametrize("value, expected", [
    ("1048576", 1 << 20), ("512k", 512 << 10), ("10M", 10 << 20), ("2GiB", 2 << 30), ("1gb", 1 << 30),
])
def test_sizes(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("query", [
    {"max_size": "ten"}, {"max_size": "-1"}, {"since": "1h", "until": "2h"}, {"glob": ["*"] * 33},
])
def test_bad_selections_are_400(query):
    with pytest.raises(BadRequest):
        parse_selection(MultiDict(query), NOW)


def test_selection_goes_to_peers_in_absolute_terms_and_back():
    chosen = parse_selection(MultiDict({"glob": ["*.log", "a b/*"], "since": "1h", "max_size": "1k"}), NOW)
    again = parse_selection(MultiDict(parse_qsl(chosen.query()[1:])), NOW + 999)
    assert chosen.query().startswith("&glob=")
    assert again == chosen
    assert chosen.describe() == {"glob": ["*.log", "a b/*"], "since": "1h", "until": None, "max_size": "1k"}


@pytest.mark.parametrize("path, folder, expected", [
    ("logs/a/b.log", "logs", "a/b.log"), ("logs/b.log", "logs", "b.log"), ("b.log", "", "b.log"),
    ("logs/b.log", "logs/b.log", "b.log"),
])
def test_below(path, folder, expected):
    assert below(path, folder) == expected
