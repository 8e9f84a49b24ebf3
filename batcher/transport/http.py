"""HTTP plumbing shared by every provider client.

`ApiClient` wraps one `httpx.Client` and adds what every provider needs:

- the key's shared `RateLimiter` is acquired before each request and fed the
  response headers after it;
- a 429 is waited out and resent, for any method: a 429 means "not processed",
  so resending the very same bytes is safe;
- GETs are retried on transport errors and 5xx (exponential backoff + jitter;
  `Retry-After` is enforced by the limiter, so no retry comes sooner);
- POSTs are never retried here on a transport error, timeout, 5xx, 408 or 409:
  those raise `OutcomeUnknown`, and the runner decides, with its ledger, when to
  resend the same key and bytes;
- JSON is parsed by msgspec's C decoder with every non-integer number handed to
  Decimal as written, so money never passes through float (NaN and Infinity,
  which are not JSON, are refused); a caller may pass a typed decoder for a
  success body (a listing page), tried first;
- error messages are built from chosen facts only (method, path, host, status,
  the provider's error text with the key scrubbed out): never headers, bodies
  or the key.

Failures map to typed exceptions: 401/403 → `AuthError`; a GET that cannot get
an answer → `ProviderUnavailable` (one line naming the host); a POST without a
definite answer → `OutcomeUnknown`. Every other status is returned to the
provider client, which knows what it means.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from batcher import __version__
from batcher.core.errors import AuthError, OutcomeUnknown, ProviderUnavailable
from batcher.transport.throttle import RateLimiter, parse_retry_after

log = logging.getLogger(__name__)

USER_AGENT = f"batcher/{__version__}"
#: Connecting should be quick; a bulk order may take a while to answer.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
#: Statuses after which a POST may or may not have been acted on.
_UNKNOWN_OUTCOME_STATUSES = {408, 409}
_MAX_ERROR_TEXT = 200

Params = Mapping[str, str | int]


@dataclass(frozen=True)
class ApiResponse:
    """A response the provider client must interpret. `data` is None when the body is not JSON."""

    status_code: int
    headers: httpx.Headers
    data: Any

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300


class _RetryableGet(Exception):
    """A GET failed in a way that may pass: transport error or 5xx."""

    def __init__(self, description: str, *, connect_failure: bool = False) -> None:
        super().__init__(description)
        self.description = description
        self.connect_failure = connect_failure


class _StillThrottled(Exception):
    """The provider kept answering 429 past our patience."""


#: msgspec's decoder (C): about twice as fast as `json.loads(parse_float=Decimal)`, which
#: was a third of the CPU of parsing a listing page. It hands each non-integer number
#: to Decimal as the text it was written with, never through float.
_decode_json: Callable[[bytes], Any] = msgspec.json.Decoder(float_hook=Decimal).decode

#: A decoder for a success body (`ApiClient.get(decode=...)`): ValueError (msgspec's
#: errors are ValueErrors) means "not for me", and the body is parsed as usual.
Decode = Callable[[bytes], Any]


def parse_json(content: bytes) -> Any:
    """JSON with every non-integer number as Decimal and every integer as int.

    Raises ValueError on bad JSON, and on NaN and Infinity: they are not JSON, and
    would come out as floats.
    """
    try:
        return _decode_json(content)
    except msgspec.DecodeError:
        pass
    # What msgspec refuses but the standard library reads, as batcher always read it:
    # a byte order mark, UTF-16 or UTF-32, an escaped lone surrogate. Bad JSON fails
    # here too, with json's own ValueError.
    return json.loads(content, parse_float=Decimal, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def canonical_json(value: Any) -> bytes:
    """Deterministic compact UTF-8 JSON: sorted keys, no spaces, Decimals as written.

    The same value always gives the same bytes, which is what lets a resend under
    an idempotency key be byte-identical. A Decimal is written with exactly the
    digits it carries (quantize it first); a float is refused.
    """
    return _canonical(value).encode("utf-8")


#: The C string encoder behind json.dumps(text, ensure_ascii=False), called directly:
#: json.dumps with keyword arguments builds a new encoder on every call, which was
#: most of the cost of encoding a plan of 100,000 rows.
_json_string: Callable[[str], str] = json.encoder.encode_basestring


def _canonical(value: Any) -> str:
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("a non-finite Decimal cannot be written as JSON")
        return format(value, "f")
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)  # as json.dumps writes an int (or an IntEnum)
    if isinstance(value, Mapping):
        fields = sorted([(str(key), item) for key, item in value.items()], key=_first)
        return "{" + ",".join([f"{_json_string(k)}:{_canonical(v)}" for k, v in fields]) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join([_canonical(item) for item in value]) + "]"
    raise TypeError(f"refusing to write {type(value).__name__} into a request body")


def _first(pair: tuple[str, Any]) -> str:
    return pair[0]


def provider_error_text(data: Any) -> str:
    """The provider's own error text from a JSON error body (`error`, `message`, `reason`)."""
    if not isinstance(data, Mapping):
        return ""
    parts: list[str] = []
    for field in ("error", "message", "reason"):
        value = data.get(field)
        if isinstance(value, str) and value.strip() and value.strip() not in parts:
            parts.append(value.strip())
    return ": ".join(parts)


def describe_transport_error(exc: httpx.HTTPError) -> str:
    """A short, safe phrase for a transport failure (never the request or its headers)."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out waiting for the answer"
    if isinstance(exc, httpx.ConnectError):
        return _describe_connect_error(exc)
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server closed the connection"
    if isinstance(exc, httpx.NetworkError):
        return "the connection broke"
    if isinstance(exc, httpx.DecodingError):
        return "the answer could not be decoded"
    return "transport error"


def _describe_connect_error(exc: BaseException) -> str:
    for cause in _exception_chain(exc):
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "host name not found"
        if isinstance(cause, ssl.SSLError):
            return "TLS handshake failed"
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    if "name or service not known" in text or "nodename nor servname" in text:
        return "host name not found"
    return "could not connect"


def _exception_chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _tls_context(base_url: str) -> ssl.SSLContext | bool:
    """Full verification for https. Plain http (loopback only: config.py) gets a
    context that trusts no certificate at all: loading the CA bundle costs a tenth of
    `batcher validate` against a local sandbox, and no redirect is ever followed."""
    if base_url.lower().startswith("http://"):
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, no CA loaded
    return True


#: httpx's private method that picks a request's transport (`_send_get`)
_TRANSPORT_FOR_URL = "_transport_for_url"

#: httpx's private attribute holding a URL's parsed parts (a NamedTuple), which
#: `_with_query` copies with a new query instead of parsing the whole URL again
_PARSED_URL = "_uri_reference"
#: Paths whose query-less URL a client keeps (`ApiClient._path_url`)
_MAX_PATH_URLS = 64
#: URLs this long or shorter may be built by `_with_query`: far below httpx's limit on a
#: URL's length, which only its parser enforces (a longer one is left to it)
_MAX_SHORT_URL = 4096
#: A query as `urlencode` writes it: only characters httpx's URL parser keeps as they
#: are (unreserved, `%XX` escapes, `+`, `=`, `&`). Anything else goes through the parser.
_PLAIN_QUERY = re.compile(r"(?:[A-Za-z0-9\-._~+=&]|%[0-9A-F]{2})*", re.ASCII)


def _query_text(params: Params) -> str:
    """`str(httpx.QueryParams(params))`: the query httpx builds from `params`.

    For text and integer values that is `urlencode` of the mapping itself (httpx
    turns an int into `str(int)` as urlencode does); any other value (a bool, which
    httpx writes as `true`) is left to QueryParams.
    """
    for value in params.values():
        kind = type(value)
        if kind is not str and kind is not int:
            return str(httpx.QueryParams(params))
    for key in params:
        if type(key) is not str:
            return str(httpx.QueryParams(params))
    return urlencode(params)


def _with_query(url: httpx.URL, query: str) -> httpx.URL:
    """`url` (no query) with `query` (`_PLAIN_QUERY`), as httpx would parse the two
    joined by "?": the parser leaves such a query as it is, and the rest of the URL
    is parsed the same with or without it."""
    built = httpx.URL.__new__(httpx.URL)
    setattr(built, _PARSED_URL, getattr(url, _PARSED_URL)._replace(query=query))
    return built


class ApiClient:
    """One provider connection: throttled, typed failures, secret-free messages."""

    def __init__(
        self,
        base_url: str,
        *,
        auth_headers: Mapping[str, str],
        limiter: RateLimiter,
        auth_hint: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        get_attempts: int = 3,
        max_throttled_retries: int = 8,
        retry_sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._secrets = tuple(value for value in auth_headers.values() if value)
        self._limiter = limiter
        self._auth_hint = auth_hint
        self._get_attempts = get_attempts
        self._max_throttled_retries = max_throttled_retries
        self._retry_sleep = retry_sleep
        self._client = httpx.Client(
            base_url=base_url,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json", **auth_headers},
            timeout=timeout,
            transport=transport,
            follow_redirects=False,  # a redirect could carry the key to another host
            verify=_tls_context(base_url),
        )
        self.host = self._client.base_url.netloc.decode("ascii")
        # What `_url` joins paths to: the base URL as httpx holds it, with the "/" httpx
        # ends its path with (str() leaves it out of a bare host); None when the base
        # URL itself carries a query or fragment, whose merging is left to httpx.
        base = self._client.base_url
        self._base_text: str | None = None
        if not base.query and not base.fragment:
            text = str(base)
            self._base_text = text if text.endswith("/") else text + "/"
        self._path_urls: dict[str, httpx.URL] = {}

    @property
    def limiter(self) -> RateLimiter:
        return self._limiter

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ verbs

    def get(
        self, path: str, *, params: Params | None = None, decode: Decode | None = None
    ) -> ApiResponse:
        """GET with retries. Raises ProviderUnavailable when no answer can be had.

        `decode`, when given, reads a success body in place of `parse_json` (a typed
        decoder: a listing page straight into models). When it raises ValueError, or
        when the body may hold one of our secrets (which only the generic path
        scrubs), the body is parsed as usual, so the caller sees what it always saw.
        """
        url = self._url(path, params)
        if url is None:
            request = self._client.build_request("GET", path, params=params)
        else:
            request = self._client.build_request("GET", url)
        try:
            try:
                # The first attempt outside tenacity: entering it costs as much CPU as
                # the URL, and most GETs succeed at once. A failure is handed to it as
                # its first attempt, so every retry decision is still tenacity's.
                return self._get_once(request, path, decode)
            except _RetryableGet as failure:
                first = failure
            return self._get_retrying()(_replay_then(first, self._get_once), request, path, decode)
        except _RetryableGet as exc:
            if exc.connect_failure:
                message = f"cannot reach {self.host}: {exc.description}"
            else:
                message = f"{self.host}: GET {path} failed: {exc.description}"
            raise ProviderUnavailable(message) from None
        except _StillThrottled:
            raise ProviderUnavailable(
                f"{self.host}: GET {path} is still rate limited after "
                f"{self._max_throttled_retries} retries"
            ) from None

    def post(
        self, path: str, *, content: bytes, headers: Mapping[str, str] | None = None
    ) -> ApiResponse:
        """POST exactly `content`. Never retried here, except a 429 (not processed).

        Raises OutcomeUnknown when the request may or may not have been acted on.
        """
        return self.write("POST", path, content=content, headers=headers)

    def write(
        self,
        method: str,
        path: str,
        *,
        content: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> ApiResponse:
        """A state-changing call (POST, PATCH, DELETE), with `post`'s rules: never
        retried here except on a 429, OutcomeUnknown when it may have been acted on."""
        request = self._client.build_request(method, path, content=content, headers=headers)
        try:
            response = self._send_throttled(request)
        except httpx.HTTPError as exc:
            raise OutcomeUnknown(f"{method} {path}: {describe_transport_error(exc)}") from None
        except _StillThrottled:
            raise OutcomeUnknown(
                f"{method} {path}: still rate limited after {self._max_throttled_retries} retries"
            ) from None
        self._raise_for_auth(response, method, path)
        status = response.status_code
        if status >= 500 or status in _UNKNOWN_OUTCOME_STATUSES:
            raise OutcomeUnknown(
                self._status_message(method, path, response), retry_after=_retry_after(response)
            )
        data = self._json_or_none(response)
        if response.is_success and data is None:
            raise OutcomeUnknown(f"{method} {path}: HTTP {status} with an unreadable body")
        return ApiResponse(status, response.headers, data)

    # -------------------------------------------------------------- internals

    def _url(self, path: str, params: Params | None) -> httpx.URL | None:
        """The URL `build_request(path, params=params)` would build, parsed once.

        Given a relative path and params, httpx parses the URL three times (the path,
        the path joined to the base URL, then again with the query): about 70 µs of
        CPU a page, 2,000 pages in a report's listings. The query is encoded as httpx's
        own QueryParams encodes it, so the URL is the same to the byte (tests compare
        them). A listing asks for the same path page after page: its URL without the
        query is parsed once per client (`_path_url`), and only the query is new.
        """
        if not params or self._base_text is None or any(c in path for c in "?#:"):
            return None  # left to httpx
        query = _query_text(params)
        text = f"{self._base_text}{path.lstrip('/')}?{query}"
        if len(text) <= _MAX_SHORT_URL and _PLAIN_QUERY.fullmatch(query):
            template = self._path_url(path)
            if template is not None:
                return _with_query(template, query)
        return httpx.URL(text)

    def _path_url(self, path: str) -> httpx.URL | None:
        """The base URL joined with `path`, without a query: parsed once per path.
        None when this httpx keeps its parsed URL where `_with_query` cannot find it."""
        url = self._path_urls.get(path)
        if url is None:
            if len(self._path_urls) >= _MAX_PATH_URLS:
                self._path_urls.clear()  # one order's path each (`redemption`): keep few
            url = httpx.URL(f"{self._base_text}{path.lstrip('/')}")
            self._path_urls[path] = url
        if not isinstance(getattr(url, _PARSED_URL, None), tuple):
            return None
        return url

    def _get_once(
        self, request: httpx.Request, path: str, decode: Decode | None = None
    ) -> ApiResponse:
        try:
            response = self._send_throttled(request, self._send_get)
        except httpx.HTTPError as exc:
            connect_failure = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
            raise _RetryableGet(
                describe_transport_error(exc), connect_failure=connect_failure
            ) from None
        self._raise_for_auth(response, "GET", path)
        if response.status_code >= 500:
            raise _RetryableGet(f"HTTP {response.status_code}")
        data = self._json_or_none(response, decode if response.is_success else None)
        if response.is_success and data is None:
            raise ProviderUnavailable(
                f"{self.host}: GET {path} answered HTTP {response.status_code} "
                "with a body that is not JSON"
            )
        return ApiResponse(response.status_code, response.headers, data)

    def _get_retrying(self) -> Retrying:
        """A GET's retry policy: transport errors and 5xx, with backoff and jitter."""
        return Retrying(
            stop=stop_after_attempt(self._get_attempts),
            wait=wait_exponential_jitter(multiplier=0.5, max=8.0, jitter=0.5),
            retry=retry_if_exception_type(_RetryableGet),
            sleep=self._retry_sleep,
            reraise=True,
        )

    def _send_throttled(
        self,
        request: httpx.Request,
        send: Callable[[httpx.Request], httpx.Response] | None = None,
    ) -> httpx.Response:
        """Send through the limiter; wait out and resend 429s (the same bytes)."""
        send = send or self._client.send
        for _ in range(self._max_throttled_retries + 1):
            self._limiter.acquire()
            try:
                response = send(request)
            except BaseException:
                self._limiter.release()
                raise
            self._limiter.observe(response.status_code, response.headers)
            log.debug("%s %s -> %s", request.method, request.url.path, response.status_code)
            if response.status_code != 429:
                return response
            log.info("%s answered 429; waiting as told before resending", self.host)
        raise _StillThrottled()

    def _send_get(self, request: httpx.Request) -> httpx.Response:
        """`Client.send(request)` for a GET, without the steps a GET of ours never needs.

        Client.send runs an auth flow (batcher has none: the key is a header), a
        redirect step (never followed) and the standard library's cookie jar over
        every answer: about 150 µs of CPU a request, a tenth of a report's 2,000
        listing pages. Here the transport is the one Client.send picks (the given
        one, or an environment proxy's), the body is read and the response closed
        as it does, and cookies are kept as it keeps them when an answer sets any.
        """
        # httpx's own choice of transport: private, so an httpx without it is served
        # by the public path (slower, the same answer)
        transport_for = getattr(self._client, _TRANSPORT_FOR_URL, None)
        if transport_for is None:
            return self._client.send(request)
        if self._client.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        response = transport_for(request.url).handle_request(request)
        response.request = request
        try:
            response.read()
        finally:
            response.close()
        if "set-cookie" in response.headers:
            self._client.cookies.extract_cookies(response)
        return response

    def _raise_for_auth(self, response: httpx.Response, method: str, path: str) -> None:
        if response.status_code in (401, 403):
            detail = self.scrub(provider_error_text(self._json_or_none(response)))
            what = "refused the API key" if response.status_code == 401 else "denied access"
            message = f"{self.host} {what} (HTTP {response.status_code} on {method} {path}"
            message += f": {detail})" if detail else ")"
            raise AuthError(message, hint=self._auth_hint)

    def _status_message(self, method: str, path: str, response: httpx.Response) -> str:
        detail = self.scrub(provider_error_text(self._json_or_none(response)))
        message = f"{method} {path}: HTTP {response.status_code}"
        return f"{message}: {detail}" if detail else message

    def _json_or_none(self, response: httpx.Response, decode: Decode | None = None) -> Any:
        """The body as JSON with every echo of our secrets blanked out, or None.

        A provider may echo the key back (in a rejection reason, say). Everything a
        provider says can end up in the ledger, a report or a log line, so no
        string leaves the transport with a secret in it. `decode` (see `get`) is
        tried first on a body that cannot hold a secret.
        """
        content = response.content
        if not content:
            return None
        secret = any(self._may_hold(content, secret) for secret in self._secrets)
        if decode is not None and not secret:
            try:
                return decode(content)
            except ValueError:
                pass  # parsed as usual: the caller reads it, or fails on it, as before
        try:
            data = parse_json(content)
        except ValueError:
            return None
        return scrub_secrets(data, self._secrets) if secret else data

    @staticmethod
    def _may_hold(content: bytes, secret: str) -> bool:
        # JSON may spell `/`, `"` or `\\` escaped, so such keys are always walked.
        return secret.encode("utf-8") in content or any(ch in secret for ch in '/"\\')

    def scrub(self, text: str) -> str:
        """Provider text, on one line, shortened, and with any of our secrets blanked out."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = " ".join(text.split())
        if len(text) > _MAX_ERROR_TEXT:
            text = text[: _MAX_ERROR_TEXT - 1] + "…"
        return text


def scrub_secrets(value: Any, secrets: Iterable[str], mask: str = "***") -> Any:
    """`value` (parsed JSON) with every occurrence of a secret in any string replaced."""
    wanted = tuple(s for s in secrets if s)
    if isinstance(value, str):
        for secret in wanted:
            value = value.replace(secret, mask)
        return value
    if isinstance(value, list):
        return [scrub_secrets(item, wanted, mask) for item in value]
    if isinstance(value, dict):
        return {
            scrub_secrets(k, wanted, mask): scrub_secrets(v, wanted, mask) for k, v in value.items()
        }
    return value


def _replay_then(
    first: _RetryableGet, attempt: Callable[..., ApiResponse]
) -> Callable[..., ApiResponse]:
    """`attempt`, whose first call (already made) failed with `first`: raises it once,
    then calls `attempt` on every later call."""
    replayed = False

    def call(*args: Any) -> ApiResponse:
        nonlocal replayed
        if not replayed:
            replayed = True
            raise first
        return attempt(*args)

    return call


def _retry_after(response: httpx.Response) -> float | None:
    return parse_retry_after(response.headers.get("retry-after"), now_epoch=time.time())
