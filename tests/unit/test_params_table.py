"""Query parameters as tables: one parser per kind of value, the same on every endpoint; bad values 400."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import MultiDict

from wsgi_stream.errors import BadRequest
from wsgi_stream.params import compress, flag, nodes


def args(**values) -> MultiDict:
    return MultiDict(values)


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", "TRUE", "Yes", "On", " 1 "])
def test_flag_true(value):
    assert flag(args(recursive=value), "recursive") is True


@pytest.mark.parametrize("value", ["0", "false", "no", "off", "", "FALSE", "No", "OFF", " "])
def test_flag_false(value):
    assert flag(args(strict=value), "strict") is False


def test_flag_absent_is_false():
    assert flag(args(), "recursive") is False


@pytest.mark.parametrize("value", ["2", "-1", "y", "n", "t", "f", "maybe", "enabled", "truefalse", "1,0"])
def test_flag_bad_value_is_400_naming_the_parameter(value):
    with pytest.raises(BadRequest) as err:
        flag(args(recursive=value), "recursive")
    assert err.value.status == 400 and err.value.message.startswith("?recursive= must be 1 or 0")


def test_flag_reads_the_first_of_repeated_values():
    assert flag(MultiDict([("strict", "1"), ("strict", "0")]), "strict") is True


@pytest.mark.parametrize("given, deflate", [
    pytest.param({}, False, id="absent-stored"),
    pytest.param({"compress": ""}, False, id="empty-stored"),
    pytest.param({"compress": "none"}, False, id="none-stored"),
    pytest.param({"compress": "stored"}, False, id="stored"),
    pytest.param({"compress": "STORED"}, False, id="stored-any-case"),
    pytest.param({"compress": "deflate"}, True, id="deflate"),
    pytest.param({"compress": "Deflate"}, True, id="deflate-any-case"),
])
def test_compress(given, deflate):
    assert compress(args(**given)) is deflate


@pytest.mark.parametrize("value", ["gzip", "zip", "1", "true", "deflate64", "br"])
def test_compress_bad_value_is_400(value):
    with pytest.raises(BadRequest) as err:
        compress(args(compress=value))
    assert err.value.status == 400 and f"not {value.lower()!r}" in err.value.message


@pytest.mark.parametrize("given, expected", [
    pytest.param({}, None, id="absent-every-node"),
    pytest.param({"nodes": "a"}, ["a"], id="one"),
    pytest.param({"nodes": "a,b"}, ["a", "b"], id="two-in-request-order"),
    pytest.param({"nodes": " a , b ,"}, ["a", "b"], id="blanks-and-empty-items-dropped"),
    pytest.param({"nodes": "b,a,b"}, ["b", "a", "b"], id="duplicates-left-to-select-nodes"),
])
def test_nodes(given, expected):
    assert nodes(args(**given)) == expected


@pytest.mark.parametrize("value", ["", ",", " , ,"])
def test_nodes_naming_none_is_400(value):
    with pytest.raises(BadRequest) as err:
        nodes(args(nodes=value))
    assert err.value.status == 400 and err.value.message == "?nodes= names no node."
