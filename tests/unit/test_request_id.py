"""The exact-id replies (translate/request_id.py): the Content-Length threshold and the reply variants."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from xds_server.core import errors
from xds_server.translate import request_id
from xds_server.translate.replies import mapper, status_is

PROTOCOL_ID = "%DYNAMIC_METADATA(envoy.filters.http.mcp:id)%"


@settings(max_examples=300, derandomize=True)
@given(limit=st.integers(min_value=1, max_value=2**32), value=st.integers(min_value=0, max_value=2**34),
       zeros=st.integers(min_value=0, max_value=3))  # fmt: skip
@example(limit=8192, value=8193, zeros=0)
@example(limit=8192, value=8192, zeros=2)
@example(limit=1048576, value=999999, zeros=0)
@example(limit=99, value=100, zeros=0)
@example(limit=9, value=10, zeros=1)
def test_greater_than_matches_exactly_the_larger_numbers(limit: int, value: int, zeros: int) -> None:
    pattern = re.compile(request_id.greater_than(limit))
    assert bool(pattern.fullmatch("0" * zeros + str(value))) == (value > limit)


def test_a_reply_echoing_the_id_becomes_three_variants_in_order() -> None:
    refusal = mapper(status_is(403), errors.TOOL_DENIED, "Tool '%DYNAMIC_METADATA(envoy.filters.http.mcp:params:name)%'"
                     " refused on '%ROUTE_NAME%' (100%% sure)", PROTOCOL_ID,
                     tool="%DYNAMIC_METADATA(envoy.filters.http.mcp:params:name)%", backend="%ROUTE_NAME%")  # fmt: skip
    plain = {"filter": status_is(404)}
    big, read, fallback, untouched = request_id.exact_ids([refusal, plain], PROTOCOL_ID)
    assert fallback == refusal and untouched == plain
    assert read["body_format_override"]["json_format"]["id"] == request_id.ID
    assert (
        read["body_format_override"]["json_format"]["error"] == refusal["body_format_override"]["json_format"]["error"]
    )
    template = big["body_format_override"]["text_format_source"]["inline_string"]
    assert template.startswith('{"jsonrpc":"2.0","id":' + request_id.ID_TEXT + ",")
    # Request-derived values are left out; our own route name and the escaped percent sign stay.
    assert "Tool '…' refused on '%ROUTE_NAME%' (100%% sure)" in template and "params:name" not in template
    spliced = template.replace(request_id.ID_TEXT, "9007199254740993").replace("%ROUTE_NAME%", "github")
    reply = json.loads(spliced.replace("%%", "%"))
    assert reply["id"] == 9007199254740993
    assert reply["error"]["data"] == {"reason": "tool_not_allowed", "backend": "github"}
    for variant in (big, read):
        assert variant["status_code"] == refusal["status_code"]
        assert refusal["filter"] in variant["filter"]["and_filter"]["filters"]


def test_a_literal_percent_sign_cannot_go_into_a_template() -> None:
    with pytest.raises(ValueError, match="literal %"):
        request_id.exact_ids([mapper(status_is(400), errors.GATEWAY_ERROR, "50% off", PROTOCOL_ID)], PROTOCOL_ID)
