"""The timeline of a registered model: built from partition records, cards and the alias
history (champion intervals, refreshes, sizes, ids), and rendered to JSON, PNG and a
self-contained HTML page. Pure functions: no Ray, no storage."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from clam_dist.registry.timeline import TOP_CLUSTERS, _top_ids, build_timeline, render_timeline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
URL = "s3://b/reg/m/assignments/dt={}/model=v{:04d}"


def _drift(share, drifted):
    return {
        "share": share,
        "energy_share_above": share,
        "size_change_share": 0.01,
        "threshold": 0.05,
        "drifted": drifted,
    }


def _gate(champion, challenger, passed):
    return {
        "metric": "inertia",
        "champion": champion,
        "challenger": challenger,
        "margin": 0.01,
        "passed": passed,
    }


def _part(key, version, before, drift, sizes, **extra):
    rec = {
        "partition": key,
        "status": "done",
        "model_version": version,
        "champion_before": before,
        "assignments": URL.format(key, version),
        "rows": sum(sizes.values()),
        "drift": drift,
        "refreshed": False,
        "promoted": False,
        "gate": None,
        "new_ids": [],
        "retired_ids": [],
        "cluster_sizes": {str(k): v for k, v in sizes.items()},
        "finished_at": f"{key}T03:20:00Z",
    }
    rec.update(extra)
    return rec


def history():
    """Six partitions: first (v1), stable, drifted + promoted (v2), stable, drifted +
    refused by the gate (v3), drifted + promoted (v4) with two new ids and one retired."""
    base = {0: 100, 1: 110, 2: 120}
    parts = [
        _part("2026-12-01", 1, None, None, base, promoted=True),
        _part("2026-12-02", 1, 1, _drift(0.01, False), base),
        _part(
            "2026-12-03",
            2,
            1,
            _drift(0.12, True),
            {0: 150, 1: 90, 2: 100},
            refreshed=True,
            promoted=True,
            challenger_version=2,
            gate=_gate(1.23, 1.01, True),
        ),
        _part("2026-12-04", 2, 2, _drift(0.02, False), {0: 140, 1: 95, 2: 105}),
        _part(
            "2026-12-05",
            2,
            2,
            _drift(0.09, True),
            {0: 130, 1: 100, 2: 110},
            refreshed=True,
            promoted=False,
            challenger_version=3,
            gate=_gate(1.00, 1.05, False),
        ),
        _part(
            "2026-12-06",
            4,
            2,
            _drift(0.30, True),
            {0: 120, 2: 100, 64: 50, 65: 40},
            refreshed=True,
            promoted=True,
            challenger_version=4,
            gate=_gate(1.10, 0.90, True),
            new_ids=[64, 65],
            retired_ids=[1],
        ),
    ]
    cards = {
        1: _card(1, None, ["2026-12-01"], matched={}, new=[0, 1, 2]),
        2: _card(2, 1, ["2026-12-01", "2026-12-03"], matched={"0": 0, "1": 1, "2": 2}),
        3: _card(3, 2, ["2026-12-03", "2026-12-05"], matched={"0": 0, "1": 1, "2": 2}),
        4: _card(4, 2, ["2026-12-05", "2026-12-06"], matched={"0": 0, "2": 2}, new=[64, 65]),
    }
    cards[4]["id_mapping"]["retired"] = [1]
    aliases = [
        _alias(1, "champion", 1, None, "first partition 2026-12-01"),
        _alias(2, "challenger", 2, None, "drift 0.12 on 2026-12-03"),
        _alias(3, "champion", 2, 1, "gate passed on 2026-12-03"),
        _alias(4, "challenger", 3, 2, "<script>alert('x')</script> refused by the gate"),
        _alias(5, "champion", 4, 2, "gate passed on 2026-12-06"),
    ]
    return parts, cards, aliases


def _card(version, parent, partitions, matched, new=()):
    return {
        "version": version,
        "parent": parent,
        "created_at": f"2026-12-0{version}T03:00:00Z",
        "partitions": partitions,
        "metrics": {"inertia": 1.0 / version, "k": 3},
        "id_mapping": {"matched": matched, "new": list(new), "retired": []},
    }


def _alias(seq, alias, version, previous, reason):
    return {
        "seq": seq,
        "alias": alias,
        "version": version,
        "previous": previous,
        "reason": reason,
        "at": f"2026-12-0{seq}T04:00:00Z",
    }


def test_partitions_ordered_with_champion_at_run_time():
    parts, cards, aliases = history()
    tl = build_timeline(parts[::-1], cards, aliases[::-1], name="m")
    assert tl["name"] == "m"
    keys = [p["partition"] for p in tl["partitions"]]
    assert keys == [f"2026-12-0{i}" for i in range(1, 7)]
    assert [p["champion"] for p in tl["partitions"]] == [1, 1, 1, 2, 2, 2]
    assert [p["model_version"] for p in tl["partitions"]] == [1, 1, 2, 2, 2, 4]
    first, _, promoted_day, _, refused_day, last = tl["partitions"]
    assert first["drift_share"] is None and first["drifted"] is None and first["gate"] is None
    assert first["promoted"] and not first["refreshed"]
    assert promoted_day["drift_share"] == 0.12 and promoted_day["drifted"] is True
    assert promoted_day["gate"] == _gate(1.23, 1.01, True)
    assert refused_day["gate"]["passed"] is False and not refused_day["promoted"]
    assert last["new_ids"] == [64, 65] and last["retired_ids"] == [1]
    assert [p["rows"] for p in tl["partitions"]] == [330, 330, 340, 340, 340, 310]
    assert [h["seq"] for h in tl["alias_history"]] == [1, 2, 3, 4, 5]


def test_champion_intervals():
    tl = build_timeline(*history())
    assert tl["champions"] == [
        {"version": 1, "from_partition": "2026-12-01", "to_partition": "2026-12-02", "current": False},
        {"version": 2, "from_partition": "2026-12-03", "to_partition": "2026-12-05", "current": False},
        {"version": 4, "from_partition": "2026-12-06", "to_partition": "2026-12-06", "current": True},
    ]  # fmt: skip


def test_refreshes_list_the_gate_decisions():
    tl = build_timeline(*history())
    assert [
        (r["partition"], r["champion_version"], r["challenger_version"], r["promoted"], r["passed"])
        for r in tl["refreshes"]
    ] == [
        ("2026-12-03", 1, 2, True, True),
        ("2026-12-05", 2, 3, False, False),
        ("2026-12-06", 2, 4, True, True),
    ]
    refused = tl["refreshes"][1]
    assert refused["metric"] == "inertia"
    assert (refused["champion_score"], refused["challenger_score"]) == (1.00, 1.05)
    assert refused["margin"] == 0.01 and refused["drift_share"] == 0.09


def test_sizes_ids_and_versions():
    tl = build_timeline(*history())
    assert tl["cluster_ids"] == [0, 1, 2, 64, 65]
    assert set(tl["sizes"]) == {p["partition"] for p in tl["partitions"]}
    assert tl["sizes"]["2026-12-01"] == {"0": 100, "1": 110, "2": 120}
    assert tl["sizes"]["2026-12-06"] == {"0": 120, "2": 100, "64": 50, "65": 40}
    assert [(v["version"], v["parent"]) for v in tl["versions"]] == [
        (1, None),
        (2, 1),
        (3, 2),
        (4, 2),
    ]
    v4 = tl["versions"][-1]
    assert v4["partitions"] == ["2026-12-05", "2026-12-06"]
    assert (v4["new_ids"], v4["retired_ids"], v4["matched_ids"]) == ([64, 65], [1], 2)
    # JSON-able, and unchanged by a round trip through JSON.
    assert json.loads(json.dumps(tl)) == tl


def test_cards_keyed_by_strings_as_read_from_json():
    parts, cards, aliases = history()
    as_json = json.loads(json.dumps(cards))
    assert (
        build_timeline(parts, as_json, aliases)["versions"]
        == build_timeline(*history())["versions"]
    )


def test_render_writes_json_png_and_self_contained_html(tmp_path):
    tl = build_timeline(*history(), name="m")
    out = tmp_path / "report" / "m"
    paths = render_timeline(tl, out, title="m <timeline>")
    assert set(paths) == {"json", "png", "html"}
    assert {Path(p).name for p in paths.values()} == {
        "timeline.json",
        "timeline.png",
        "timeline.html",
    }
    assert sorted(p.name for p in out.iterdir()) == [
        "timeline.html",
        "timeline.json",
        "timeline.png",
    ]
    assert json.loads(Path(paths["json"]).read_text()) == tl
    png = Path(paths["png"]).read_bytes()
    assert png.startswith(PNG_MAGIC)
    page = Path(paths["html"]).read_text()
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert embedded and base64.b64decode(embedded.group(1)) == png
    for p in tl["partitions"]:
        assert p["partition"] in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; refused by the gate" in page
    assert "m &lt;timeline&gt;" in page
    assert "1.23" in page and "1.01" in page  # gate numbers
    assert "64, 65" in page  # new ids


def test_user_partition_keys_are_escaped(tmp_path):
    parts, cards, aliases = history()
    parts[1]["partition"] = 'region=<b>eu</b>&"x"'
    tl = build_timeline(parts, cards, aliases)
    page = Path(render_timeline(tl, tmp_path)["html"]).read_text()
    assert "region=&lt;b&gt;eu&lt;/b&gt;&amp;&quot;x&quot;" in page
    assert "<b>" not in page


def test_records_missing_optional_keys_render(tmp_path):
    parts = [
        {"partition": "2026-01-02"},
        {"partition": "2026-01-01", "drift": {"share": "not a number"}, "gate": {}},
        {
            "partition": "2026-01-03",
            "refreshed": True,
            "drift": {"threshold": 0.05},
            "cluster_sizes": {"0": 10, "x": None},
            "new_ids": None,
        },
        {},  # not even a partition key
        "not a record",
    ]
    cards = {1: {}, "2": {"version": 2, "id_mapping": None, "partitions": None}}
    aliases = [{}, {"seq": 1, "alias": "champion"}]
    tl = build_timeline(parts, cards, aliases)
    assert [p["partition"] for p in tl["partitions"]] == [
        "2026-01-01",
        "2026-01-02",
        "2026-01-03",
        None,
    ]
    assert tl["partitions"][0]["drift_share"] is None
    assert tl["partitions"][0]["gate"]["passed"] is None
    assert tl["refreshes"][0]["partition"] == "2026-01-03"
    assert tl["refreshes"][0]["challenger_version"] is None
    assert tl["champions"] == []
    assert tl["cluster_ids"] == [0]
    assert [v["version"] for v in tl["versions"]] == [1, 2]
    assert [h["seq"] for h in tl["alias_history"]] == [1, None]
    paths = render_timeline(tl, tmp_path)
    assert Path(paths["png"]).read_bytes().startswith(PNG_MAGIC)
    page = Path(paths["html"]).read_text()
    assert "n/a" in page and "2026-01-03" in page


def test_empty_history_renders(tmp_path):
    tl = build_timeline([], {}, [])
    assert tl["partitions"] == [] and tl["champions"] == [] and tl["cluster_ids"] == []
    paths = render_timeline(tl, tmp_path)
    assert Path(paths["png"]).read_bytes().startswith(PNG_MAGIC)


def test_many_clusters_keep_the_largest_and_other(tmp_path):
    sizes = {i: 1000 - 10 * i for i in range(60)}
    parts = [
        _part(f"2026-12-{d:02d}", 1, 1 if d > 1 else None, _drift(0.01, False), sizes)
        for d in range(1, 31)
    ]
    tl = build_timeline(parts, {}, [])
    top, has_other = _top_ids(tl, tl["partitions"])
    assert top == [str(i) for i in range(TOP_CLUSTERS)] and has_other
    assert len(tl["cluster_ids"]) == 60
    paths = render_timeline(tl, tmp_path)
    assert Path(paths["png"]).read_bytes().startswith(PNG_MAGIC)
