"""The operator console over HTTP (real Redis, uvicorn on a real socket): locked without a
session, CSRF on every POST, rate-limited logins, security headers, nothing rendered raw,
personal data only on the order page, and the buttons do what they say."""

from __future__ import annotations

from html.parser import HTMLParser

import fakeredis
import httpx
import pytest

from dispatcher import Settings
from dispatcher.ops.status import take_snapshot
from dispatcher.settings import ConfigError, load_settings
from dispatcher.web.app import create_app
from support.console import (
    BROKEN,
    FAILING_ID,
    GOOD,
    HOSTILE_ERROR,
    HOSTILE_ID,
    HOSTILE_NAME,
    HOSTILE_REASON,
    HOSTILE_TITLE,
    TOKEN,
    World,
    csrf_of,
    logged_in,
)
from support.ops import Returns, work
from support.web import serving

pytestmark = pytest.mark.redis

PAGES = [
    "/",
    "/console/live",
    "/console/integrations",
    "/console/integrations?q=%3Cscript%3E&state=failing&sort=error&dir=desc",
    "/console/failures",
    "/console/failures?q=%3Cscript%3E",
    "/console/results",
    f"/console/order?id={HOSTILE_ID}",
    "/console/order?id=%3Cscript%3Ealert(1)%3C/script%3E",
]


class Tags(HTMLParser):
    """Every element and attribute of a page, and its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    return tags


def test_the_console_is_off_without_its_token(redis_url: str) -> None:
    app = create_app(Settings(REDIS_URL=redis_url), fakeredis.FakeRedis())
    with serving(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/").status_code == 404
        assert client.get("/console/integrations").status_code == 404


def test_a_short_token_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(DISPATCHER_CONSOLE_TOKEN="short")
    assert str(caught.value) == (
        "DISPATCHER_CONSOLE_TOKEN: must be at least 16 characters (it is the console's password)"
    )
    assert "short" not in str(caught.value)


def test_nothing_but_the_login_form_without_a_session(world: World) -> None:
    with httpx.Client(base_url=world.url, timeout=10) as client:
        home = client.get("/")
        assert home.status_code == 200
        tags = parse(home.text)
        assert ("input", {"type": "password", "id": "token", "name": "token",
                          "autocomplete": "current-password", "required": None,
                          "autofocus": None}) in tags.tags  # fmt: skip
        assert BROKEN not in home.text and "Problems" not in home.text
        for path in PAGES[2:]:
            answer = client.get(path)
            assert answer.status_code == 303 and answer.headers["location"] == "/", path
        assert client.get("/console/live").status_code == 401
        # A forged cookie is no session.
        client.cookies.set("dispatcher_console", "eyJ4Ijox.forged")
        assert client.get("/console/failures").status_code == 303
        # The rest of `dispatcher web` is unchanged.
        assert client.get("/healthz").status_code == 200


def test_login_sets_a_signed_httponly_strict_cookie(world: World) -> None:
    with httpx.Client(base_url=world.url, timeout=10) as client:
        form = client.get("/")
        wrong = client.post("/console/login", data={"token": "nope", "csrf": csrf_of(form.text)})
        assert wrong.status_code == 403 and "Wrong token." in wrong.text
        assert "dispatcher_console=" not in wrong.headers.get("set-cookie", "").replace(
            "dispatcher_console_login=", ""
        )
        answer = client.post("/console/login", data={"token": TOKEN, "csrf": csrf_of(wrong.text)})
        assert answer.status_code == 303
        cookie = next(
            c for c in answer.headers.get_list("set-cookie") if c.startswith("dispatcher_console=")
        )
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
        assert TOKEN not in cookie
        assert client.get("/console/failures").status_code == 200
    # Over HTTPS (a reverse proxy on this host saying so), the cookie is Secure.
    # (httpx keeps Secure cookies off plain http: the pre-session cookie is sent by hand.)
    with httpx.Client(base_url=world.url, timeout=10) as client:
        https = {"X-Forwarded-Proto": "https"}
        form = client.get("/", headers=https)
        assert "; secure" in form.headers["set-cookie"].lower()
        pre = form.headers["set-cookie"].split(";")[0]
        client.cookies.clear()
        answer = client.post(
            "/console/login",
            data={"token": TOKEN, "csrf": csrf_of(form.text)},
            headers={**https, "Cookie": pre},
        )
        assert answer.status_code == 303
        session = next(
            c for c in answer.headers.get_list("set-cookie") if c.startswith("dispatcher_console=")
        )
        assert "; secure" in session.lower()


def test_every_post_without_its_csrf_token_is_refused(world: World) -> None:
    with logged_in(world.url) as client:
        page = client.get("/console/integrations")
        csrf = csrf_of(page.text)
        posts = [
            ("/console/integrations", {"pause": GOOD[0]}),
            ("/console/failures/retry", {"all": "1"}),
            ("/console/logout", {}),
            ("/console/login", {"token": TOKEN}),
        ]
        for path, form in posts:
            for token in (None, "forged", csrf + "x"):
                data = form if token is None else {**form, "csrf": token}
                answer = client.post(path, data=data)
                assert answer.status_code == 403, (path, token)
        # Nothing happened.
        snapshot = take_snapshot(world.redis, world.settings)
        assert not any(i.paused for i in snapshot.integrations)
        assert snapshot.queues[0].failed == 2
        assert client.get("/console/failures").status_code == 200  # still logged in
    # Another session's token does not do either.
    with logged_in(world.url) as one, logged_in(world.url) as other:
        csrf = csrf_of(one.get("/console/integrations").text)
        answer = other.post("/console/integrations", data={"pause": GOOD[0], "csrf": csrf})
        assert answer.status_code == 403


def test_logins_are_rate_limited_per_client(world: World) -> None:
    attempts = world.settings.console_login_attempts
    with httpx.Client(base_url=world.url, timeout=10) as client:
        page = client.get("/")
        for _ in range(attempts):
            page = client.post(
                "/console/login", data={"token": "guess", "csrf": csrf_of(page.text)}
            )
            assert page.status_code == 403
        # Even the right token waits now.
        page = client.post("/console/login", data={"token": TOKEN, "csrf": csrf_of(page.text)})
        assert page.status_code == 429
        assert "Too many login attempts: try again in" in page.text
        assert 0 < int(page.headers["Retry-After"]) <= world.settings.console_login_window
    key = world.keys().console_login("127.0.0.1")
    assert 0 < world.redis.ttl(key) <= world.settings.console_login_window


def test_every_page_has_the_security_headers(world: World) -> None:
    with logged_in(world.url) as client:
        for path in PAGES:
            answer = client.get(path)
            assert answer.status_code == 200, path
            csp = answer.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp
            assert answer.headers["cache-control"] == "no-store"
            assert answer.headers["x-frame-options"] == "DENY"
            assert answer.headers["x-content-type-options"] == "nosniff"


def test_no_page_renders_a_value_unescaped(world: World) -> None:
    hostile = [HOSTILE_NAME, HOSTILE_TITLE, HOSTILE_REASON, HOSTILE_ERROR]
    with logged_in(world.url) as client:
        seen_text = ""
        for path in PAGES:
            page = client.get(path)
            tags = parse(page.text)
            for tag, attrs in tags.tags:
                assert tag not in {"img", "iframe", "object", "embed", "b"}, (path, tag, attrs)
                assert not any(name.startswith("on") for name in attrs), (path, tag, attrs)
                if tag == "script":
                    assert attrs == {"src": "/console/static/console.js", "defer": None}, path
                if tag == "svg":
                    assert attrs.get("id") == "chart" or attrs.get("class") == "plot", path
            assert "<script>alert" not in page.text and "<img src=x" not in page.text, path
            seen_text += "".join(tags.text)
        # Shown as text, where it belongs.
        for value in hostile:
            assert value in seen_text, value
        assert "KOMBO.<b>BAD</b>" in seen_text


def test_personal_data_only_on_the_order_page(world: World) -> None:
    personal = [HOSTILE_NAME, HOSTILE_TITLE, "hostile.candidate@example.com"]
    with logged_in(world.url) as client:
        for path in PAGES:
            text = "".join(parse(client.get(path).text).text)
            on_order_page = path == f"/console/order?id={HOSTILE_ID}"
            for value in personal:
                assert (value in text) is on_order_page, (path, value)


def test_pause_and_resume(world: World) -> None:
    with logged_in(world.url) as client:
        csrf = csrf_of(client.get("/console/integrations").text)
        answer = client.post(
            "/console/integrations", data={"csrf": csrf, "pause": GOOD[1], "q": "lever"}
        )
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console/integrations?q=lever&state=&sort=&dir="
        paused = {
            i.integration_id
            for i in take_snapshot(world.redis, world.settings).integrations
            if i.paused
        }
        assert paused == {GOOD[1]}
        page = client.get("/console/integrations?state=paused")
        assert f'name="resume" value="{GOOD[1]}"' in page.text and GOOD[0] not in page.text
        answer = client.post("/console/integrations", data={"csrf": csrf, "resume": GOOD[1]})
        assert not any(i.paused for i in take_snapshot(world.redis, world.settings).integrations)
        unknown = client.post("/console/integrations", data={"csrf": csrf, "pause": "acme:NOPE"})
        assert unknown.status_code == 404
        assert not world.redis.sismember(world.keys().paused, "acme:NOPE")


def test_retry_one_then_all_matching(world: World) -> None:
    with logged_in(world.url) as client:
        page = client.get("/console/failures")
        assert page.text.count('name="job"') == 2
        row = client.get(f"/console/failures?q={FAILING_ID}")
        assert row.text.count('name="job"') == 1
        one = next(
            a["value"] for t, a in parse(row.text).tags if t == "button" and a.get("name") == "job"
        )
        answer = client.post(
            "/console/failures/retry", data={"csrf": csrf_of(page.text), "job": one}
        )
        assert answer.headers["location"] == "/console/failures?q=&retried=1"
        assert "Re-queued 1 job." in client.get(answer.headers["location"]).text
        work(world.redis, world.settings, [Returns("vendor")])
        snapshot = take_snapshot(world.redis, world.settings)
        assert snapshot.queues[0].failed == 1
        answer = client.post(
            "/console/failures/retry",
            data={"csrf": csrf_of(page.text), "all": "1", "q": "hostile"},
        )
        assert answer.headers["location"] == "/console/failures?q=hostile&retried=1"
        work(world.redis, world.settings, [Returns("vendor")])
        assert take_snapshot(world.redis, world.settings).queues[0].failed == 0


def test_order_timeline(world: World) -> None:
    with logged_in(world.url) as client:
        page = client.get(f"/console/order?id={FAILING_ID}")
        text = "".join(parse(page.text).text)
        assert f"Order {FAILING_ID} in {GOOD[1]}" in text
        assert "dispatched (marked seen by poll)" in text and "failed in vendor" in text
        missing = client.get("/console/order?id=NOPE")
        assert "No integration knows order NOPE." in "".join(parse(missing.text).text)
