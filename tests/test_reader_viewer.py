"""The rater's viewer on the server side: 16-bit stacks, their route and blinding, response
times, and an order that the study file reproduces (issue 24, items 1, 3, 5, 6).

The first version served one pre-windowed 8-bit PNG per pair: no stack route (404), no
response time, and each rater's order drawn from ``secrets``.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_reader_app import form_of, new_database
from test_reader_pairs import demo_study

from medlossy.errors import MedlossyError
from medlossy.reader_study import app as app_module
from medlossy.reader_study.app import CLOCK_SLACK_MS, create_app
from medlossy.reader_study.db import Database, order_seed, presentation_order
from medlossy.reader_study.pairs import (
    PairSettings,
    gap_width,
    load_key,
    load_pairs,
    study_seed,
)
from medlossy.reader_study.stacks import (
    HEADER,
    read_stack,
    sixteen_bit,
    stack_range,
    transfer_order,
    write_stack,
)
from medlossy.reader_study.windows import PRESETS, Window


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return demo_study(tmp_path_factory)


@pytest.fixture
def client(study, tmp_path):
    database, raters, admin = new_database(study, tmp_path)
    return TestClient(create_app(study, database), follow_redirects=False), database, \
        raters, admin


def _values(header, codes: np.ndarray) -> np.ndarray:
    return codes.astype(np.float64) * header.slope + header.intercept


def test_each_pair_has_a_stack_of_16_bit_values_around_its_slice(study):
    key = load_key(study)
    for pair in load_pairs(study):
        header, codes = read_stack(study / pair["stack"])
        entry = key[pair["id"]]
        first, last = entry["stack"]
        assert header.slices == last - first + 1 == 5  # --stack 2 by default
        assert first + header.centre == entry["slice"]
        assert codes.shape == (2, 5, header.rows, header.columns)
        if entry["modality"] == "CT":  # HU are integers: kept exactly, no rescaling
            assert (header.slope, header.intercept) == (1.0, 0.0)
            assert header.windows[1:] == tuple(PRESETS[name] for name in
                                               ("soft-tissue", "lung", "bone", "brain"))
        else:  # MR presets: percentile windows, narrower and narrower
            widths = [width for width, _ in header.windows[1:]]
            assert widths == sorted(widths, reverse=True) and widths[-1] > 0
        # The pre-windowed PNG is the stack's own slice through the study's window.
        composite = np.asarray(Image.open(study / pair["image"]))
        low, high = entry["window"]["low"], entry["window"]["high"]
        window = Window("custom", high - low, (low + high) / 2)
        left = window.apply(_values(header, codes[0, header.centre]), (low, high))
        right = window.apply(_values(header, codes[1, header.centre]), (low, high))
        columns = header.columns
        assert np.array_equal(composite[:, :columns], left)
        assert np.array_equal(composite[:, columns + gap_width(columns):], right)
        # Which side holds the less compressed image is the key's, never the file's.
        if not entry["identical"]:
            assert not np.array_equal(codes[0], codes[1])


def test_stack_ranges_stay_inside_the_volume():
    assert stack_range(10, 2, 40) == range(8, 13)
    assert stack_range(0, 2, 40) == range(0, 5)
    assert stack_range(39, 2, 40) == range(35, 40)
    assert stack_range(1, 3, 4) == range(0, 4)  # thinner than the stack
    assert stack_range(5, 0, 9) == range(5, 6)


def test_sixteen_bit_keeps_integers_and_spans_floats():
    assert sixteen_bit(np.array([-1024.0, 3071.0])) == (1.0, 0.0)
    slope, intercept = sixteen_bit(np.array([0.0, 0.25, 70000.0]))
    assert slope * 32767 + intercept >= 70000.0 - slope and intercept - slope * 32767 <= 0.0


@pytest.mark.parametrize("stack", [-1, 11])
def test_a_stack_out_of_range_is_refused(stack):
    with pytest.raises(MedlossyError, match="--stack must be 0 to 10"):
        PairSettings(ratios=(1, 5), per_pair=1, window=Window("auto"), stack=stack)


def _keyless_pages(client, monkeypatch) -> tuple:
    """The test client, the rater and each of its 12 pages with its pair id; from here on a
    request that reads the key fails the test."""
    def no_key(_):
        raise AssertionError("a rater's request read the key")
    monkeypatch.setattr(app_module, "load_key", no_key)
    client, _, (rater, _), _ = client
    pages = [client.get(f"/r/{rater.token}/p/{position}").text for position in range(1, 13)]
    return client, rater, [(page, form_of(page)["pair"]) for page in pages]


def test_stacks_are_served_blind(client, study, monkeypatch):
    """Every stack of a case has the same byte count and the same headers, and serving them
    never reads the key (issue 24, item 6)."""
    client, rater, pages = _keyless_pages(client, monkeypatch)
    headers, sizes = set(), {}
    for page, pair_id in pages:
        assert f'data-stack="/r/{rater.token}/stack/{pair_id}.bin"' in page
        stack = client.get(f"/r/{rater.token}/stack/{pair_id}.bin")
        assert stack.status_code == 200
        assert stack.headers["content-type"] == "application/octet-stream"
        assert "content-encoding" not in stack.headers  # compression would leak the ratio
        headers.add(tuple(sorted((k, v) for k, v in stack.headers.items()
                                 if k != "content-length")))
        assert stack.content == (study / "stacks" / f"{pair_id}.bin").read_bytes()
        shape = stack.content[8:20]  # slices, rows, columns
        sizes.setdefault(shape, set()).add(len(stack.content))
    assert len(headers) == 1
    assert all(len(found) == 1 for found in sizes.values())
    for path in ("/r/{t}/stack/{f}.bin", "/r/{t}/stack/{p}.png", "/r/{t}/img/{p}.bin",
                 "/r/{t}/stacks/{p}.bin", "/r/{t}/stack/..%2Fkey.json", "/r/{b}/stack/{p}.bin"):
        url = path.format(t=rater.token, b="A" * 43, f="0" * 32, p=pair_id)
        assert client.get(url).status_code == 404, url


def test_stacks_are_served_in_two_blind_parts_the_pairs_own_slice_first(client, study,
                                                                          monkeypatch):
    """The page preloads part 1 of its stack (the header and the pair's own slice, both
    sides) and has the 8-bit composite only for browsers without script; part 2 holds the
    other slices. Parts of the same stack size have the same byte count and headers, and
    serving them never reads the key (issue 24, items 6 and 7).

    Before, the page fetched the whole 5.2 MB stack (512 x 512, five slices) and the
    composite PNG, and the first view waited for all of it."""
    client, rater, pages = _keyless_pages(client, monkeypatch)
    headers, sizes = set(), {}
    for page, pair_id in pages:
        stack = f"/r/{rater.token}/stack/{pair_id}.bin"
        head, body = page.split("</head>")
        assert (f'<link rel="preload" href="{stack}?part=1" as="fetch" crossorigin '
                'media="(scripting: enabled)">') in head
        image = f'<img id="pair" src="/r/{rater.token}/img/{pair_id}.png"'
        assert f"<noscript>{image}" in body and body.count("<img") == 1
        parts = [client.get(f"{stack}?part={part}") for part in (1, 2)]
        header, codes = read_stack(study / "stacks" / f"{pair_id}.bin")
        first = np.frombuffer(parts[0].content, dtype="<i2", offset=HEADER.size)
        assert np.array_equal(first.reshape(2, header.rows, header.columns),
                              codes[:, header.centre])
        assert parts[0].content + parts[1].content == \
            (study / "stacks" / f"{pair_id}.bin").read_bytes()
        for number, response in enumerate(parts, 1):
            assert response.status_code == 200
            assert "content-encoding" not in response.headers
            headers.add(tuple(sorted((k, v) for k, v in response.headers.items()
                                     if k != "content-length")))
            sizes.setdefault((number, header.slices, header.rows, header.columns),
                             set()).add(len(response.content))
    assert len(headers) == 1
    assert all(len(found) == 1 for found in sizes.values())
    for query in ("part=0", "part=3", "part=01", "part=1&part=2", "part=", "x=1"):
        assert client.get(f"{stack}?{query}").status_code == 404, query
    assert client.get(f"/r/{rater.token}/img/{pair_id}.png?part=1").status_code == 404
    assert client.get(f"/r/{'A' * 43}/stack/{pair_id}.bin?part=1").status_code == 404


def test_pages_name_their_assets_by_content_so_that_browsers_keep_them(client):
    """The stylesheet and scripts are named by their content's hash and may be kept for
    good; any other URL of them is not stored (issue 24, item 7). Before, every pair's page
    fetched all three again (no-store) before its first view could be drawn."""
    client, _, (rater, _), _ = client
    page = client.get(f"/r/{rater.token}/p/1").text
    assets = re.findall(r'(?:href|src)="(/static/[^"]+)"', page)
    assert len(assets) == 3
    for url in assets:
        response = client.get(url)
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert "content-security-policy" in response.headers
        name, version = url.removeprefix("/static/").split("?v=")
        assert version == hashlib.sha256(response.content).hexdigest()[:16]
        for other in ("", f"?v={'0' * 16}"):
            assert client.get(f"/static/{name}{other}").headers["cache-control"] == "no-store"


def test_a_study_without_stacks_shows_the_composite_image(study, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for name in ("pairs.json", "key.json", "study.json", "images"):
        (old / name).symlink_to(study / name)
    database, (rater, _), _ = new_database(old, tmp_path)
    client = TestClient(create_app(old, database), follow_redirects=False)
    page = client.get(f"/r/{rater.token}/p/1").text
    assert "data-stack" not in page and '<img id="pair"' in page
    assert client.get(f"/r/{rater.token}/stack/{form_of(page)['pair']}.bin").status_code == 404


def test_response_times_are_the_pages_when_the_server_agrees(client, study):
    client, database, (rater, _), admin = client
    cases = {}
    for position, elapsed in ((1, "1500"), (2, str(3_600_000)), (3, ""), (4, None)):
        form = form_of(client.get(f"/r/{rater.token}/p/{position}").text)
        assert form["elapsed_ms"] == ""  # filled in by the page's script
        if elapsed is None:
            del form["elapsed_ms"]  # a page served before the field existed
        else:
            form["elapsed_ms"] = elapsed
        time.sleep(0.05)
        assert client.post(f"/r/{rater.token}/answer", data=form).status_code == 303
        cases[form["pair"]] = elapsed
    stored = {a["pair"]: a["response_ms"] for a in database.all_answers()}
    for pair, elapsed in cases.items():
        if elapsed == "1500":  # the page's measure, within the server's 50 ms + slack
            assert stored[pair] == 1500
        else:  # an hour claimed after 50 ms, or nothing: the server's own measure
            assert 50 <= stored[pair] < CLOCK_SLACK_MS, (elapsed, stored[pair])
    form = form_of(client.get(f"/r/{rater.token}/p/5").text)
    for bad in ("-1", "1.5", "x", "1" * 10):
        response = client.post(f"/r/{rater.token}/answer", data=form | {"elapsed_ms": bad})
        assert response.status_code == 400, bad
    export = client.get(f"/admin/{admin.token}/answers.csv").text.splitlines()
    assert export[0].split(",")[:5] == ["rater", "pair", "answer", "answered_at",
                                        "response_ms"]
    assert any(line.split(",")[4] == "1500" for line in export[1:])


def test_a_raters_order_follows_from_the_study_file(study, tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'answers.sqlite'}")
    ids = [pair["id"] for pair in load_pairs(study)]
    tokens = database.setup(ids, 2, study_seed=study_seed(study))
    client = TestClient(create_app(study, database), follow_redirects=False)
    orders = {}
    for name in ("rater1", "rater2"):
        shown = [form_of(client.get(f"/r/{tokens[name]}/p/{n}").text)["pair"]
                 for n in range(1, len(ids) + 1)]
        assert shown == presentation_order(ids, order_seed(study_seed(study), name))
        orders[name] = shown
    assert orders["rater1"] != orders["rater2"]
    again = Database(f"sqlite:///{tmp_path / 'again.sqlite'}")
    again.setup(ids, 1, study_seed=study_seed(study))
    assert again.raters("rater")[0].order_seed == order_seed(study_seed(study), "rater1")


def test_serve_seeds_orders_from_the_study(study, tmp_path, monkeypatch, cli):
    import uvicorn
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    url = f"sqlite:///{tmp_path / 'answers.sqlite'}"
    code, _, err = cli("reader", "serve", study, "--db", url, "--raters", "1")
    assert code == 0, err
    rater = Database(url).raters("rater")[0]
    assert rater.order_seed == order_seed(study_seed(study), "rater1")


def test_a_stack_file_holds_the_pairs_own_slice_first(tmp_path):
    left = np.arange(3 * 2 * 4, dtype=np.float64).reshape(3, 2, 4)
    right = -left
    path = tmp_path / "stack.bin"
    write_stack(path, left, right, 2, "CT", (1.0, 0.0), [(400.0, 40.0)] * 5)
    header, codes = read_stack(path)
    assert (header.slices, header.rows, header.columns, header.centre) == (3, 2, 4, 2)
    assert np.array_equal(codes[0], left) and np.array_equal(codes[1], right)
    first = np.frombuffer(path.read_bytes(), dtype="<i2", offset=128, count=16)
    assert np.array_equal(first, np.concatenate([left[2].ravel(), right[2].ravel()]))
    assert transfer_order(5, 0) == [0, 1, 2, 3, 4] and transfer_order(5, 2) == [2, 1, 3, 0, 4]
