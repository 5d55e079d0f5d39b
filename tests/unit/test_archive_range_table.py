"""Range and If-Range on a cluster ZIP (RFC 9110 §13.1.5, §14): what part of the archive goes out."""

import pytest
from werkzeug.datastructures import Headers

from wsgi_stream.cluster import archive_range
from wsgi_stream.errors import RangeNotSatisfiable

ETAG = '"zip-abc"'
LENGTH = 1000


@pytest.mark.parametrize("headers, expected", [
    pytest.param({}, None, id="no-range-whole"),
    pytest.param({"Range": "bytes=100-"}, (100, 1000), id="rfc9110-14.1.2-open-ended"),
    pytest.param({"Range": "bytes=100-199"}, (100, 200), id="rfc9110-14.1.2-closed"),
    pytest.param({"Range": "bytes=-10"}, (990, 1000), id="rfc9110-14.1.2-suffix"),
    pytest.param({"Range": "bytes=990-5000"}, (990, 1000), id="rfc9110-14.1.2-last-past-end-clamped"),
    pytest.param({"Range": "bytes=100-", "If-Range": ETAG}, (100, 1000), id="rfc9110-13.1.5-if-range-match"),
    pytest.param({"Range": "bytes=100-", "If-Range": '"zip-other"'}, None, id="rfc9110-13.1.5-if-range-mismatch-whole"),
    pytest.param({"Range": "bytes=100-", "If-Range": "W/" + ETAG}, None, id="rfc9110-13.1.5-weak-never-matches"),
    pytest.param({"Range": "bytes=100-", "If-Range": "Thu, 26 Nov 2026 08:00:00 GMT"}, None,
                 id="if-range-date-not-trusted-for-archives"),
    pytest.param({"Range": "bytes=0-1,5-6"}, None, id="rfc9110-14.2-several-ranges-ignored"),
    pytest.param({"Range": "items=0-1"}, None, id="rfc9110-14.2-other-unit-ignored"),
    pytest.param({"Range": "bytes=abc"}, None, id="rfc9110-14.2-invalid-ignored"),
])
def test_archive_range(headers, expected):
    assert archive_range(Headers(headers), LENGTH, ETAG) == expected


@pytest.mark.parametrize("length, etag", [(None, ETAG), (LENGTH, None)], ids=["deflated-no-length", "no-etag"])
def test_no_range_without_length_and_etag(length, etag):
    assert archive_range(Headers({"Range": "bytes=1-"}), length, etag) is None


def test_rfc9110_15_5_17_past_the_end_is_416_with_the_length():
    with pytest.raises(RangeNotSatisfiable) as err:
        archive_range(Headers({"Range": "bytes=1000-"}), LENGTH, ETAG)
    assert ("Content-Range", "bytes */1000") in err.value.headers
