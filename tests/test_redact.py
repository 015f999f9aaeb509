"""redact_url: the one function every shown URL goes through (pure vectors)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, strategies as st

from sse_daemon.policy.redact import redact_url, redact_urls

pytestmark = pytest.mark.reactor_free


@pytest.mark.parametrize("url, shown", [
    # nothing secret: byte for byte the same
    ("http://127.0.0.1:8020/testsse", "http://127.0.0.1:8020/testsse"),
    ("https://example.org/sse?channel=a&n=1#top", "https://example.org/sse?channel=a&n=1#top"),
    ("http://[::1]:9/e?q=%41", "http://[::1]:9/e?q=%41"),
    ("", ""),
    ("not a url", "not a url"),
    # userinfo, whatever it holds (a user name can be a token too)
    ("http://user:hunter2@127.0.0.1:8020/e", "http://***@127.0.0.1:8020/e"),
    ("https://ghp_abcdef@github.example/x", "https://***@github.example/x"),
    ("http://user:p@ss@host/e", "http://***@host/e"),
    ("http://:pw@host/", "http://***@host/"),
    ("redis://:s3cret@10.0.0.1:6379/0", "redis://***@10.0.0.1:6379/0"),
    # query parameters named like secrets, any case, encoded or not
    ("http://h/e?access_token=abc&x=1", "http://h/e?access_token=***&x=1"),
    ("http://h/e?x=1&API_KEY=abc", "http://h/e?x=1&API_KEY=***"),
    ("http://h/e?apikey=abc;token=def", "http://h/e?apikey=***;token=***"),
    ("http://h/e?X-Amz-Signature=f00&X-Amz-Credential=AKIA%2F1&X-Amz-Date=20240101",
     "http://h/e?X-Amz-Signature=***&X-Amz-Credential=***&X-Amz-Date=20240101"),
    ("http://h/e?sv=2022&sig=abc%3D", "http://h/e?sv=2022&sig=***"),
    ("http://h/e?password=a&passwd=b&pwd=c&secret=d&auth=e&session_id=f&jwt=g",
     "http://h/e?password=***&passwd=***&pwd=***&secret=***&auth=***&session_id=***&jwt=***"),
    ("http://h/e?access%5Ftoken=abc", "http://h/e?access%5Ftoken=***"),
    ("http://h/e?token=&token", "http://h/e?token=&token"),  # nothing to hide
    ("http://h/e?token=a=b", "http://h/e?token=***"),
    # the fragment (OAuth's implicit flow puts tokens there)
    ("http://h/cb#access_token=abc&state=1", "http://h/cb#access_token=***&state=1"),
    ("http://h/doc#section-token", "http://h/doc#section-token"),
    # all at once
    ("https://u:p@h:1/e?id_token=a&n=2#x", "https://***@h:1/e?id_token=***&n=2#x"),
    # a URL with a line break or odd characters still comes back masked
    ("http://u:p@h/e?token=a\nb", "http://***@h/e?token=***"),
])
def test_vectors(url: str, shown: str) -> None:
    assert redact_url(url) == shown


_USERINFO = "abcXYZ019-._~!$'()*+,%"


@given(user=st.text(min_size=1, alphabet=_USERINFO), secret=st.text(min_size=6, alphabet=_USERINFO),
       path=st.text(alphabet="abc/"))
def test_no_credential_survives(user: str, secret: str, path: str) -> None:
    skeleton = f"https://***@host.example/{path}?n=1&access_token=***"
    assume(secret not in skeleton)
    shown = redact_url(f"https://{user}:{secret}@host.example/{path}?n=1&access_token={secret}")
    assert shown == skeleton


@given(st.text())
def test_never_raises(text: str) -> None:
    assert isinstance(redact_url(text), str)


@pytest.mark.parametrize("text, shown", [
    ("no url here", "no url here"),
    ("found 'ftp://u:pw@h/x?token=t' in line 3", "found 'ftp://***@h/x?token=***' in line 3"),
    ('a "https://h/e?api_key=k" and http://u:p@h2/ then', 'a "https://h/e?api_key=***" and http://***@h2/ then'),
    ("receiver.url='http://u:p@h/e') (a string)", "receiver.url='http://***@h/e') (a string)"),
])
def test_urls_inside_text(text: str, shown: str) -> None:
    assert redact_urls(text) == shown
