"""Evaluation at scale (streamed over a committed output, joined with a sample) against
float64 references, the report files, the CLI, and refusals. No Ray: the committed output
is produced by the same predictor the Ray actors use, through the same commit protocol."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import (
    adjusted_rand_score,
    normalized_mutual_info_score,
    silhouette_score,
)

from clam_dist.artifacts import ModelArtifact, save_artifact
from clam_dist.assign.commit import IncompleteOutputError, OutputPrefix
from clam_dist.data.errors import DataError
from clam_dist.data.source import VectorSource
from clam_dist.data.stats import sample_rows
from clam_dist.data.stream import iter_batches
from clam_dist.data.writer import write_vectors
from clam_dist.datasets.synthetic import make_gaussian_mixture
from clam_dist.evaluate import EvaluateConfig, run_evaluation
from clam_dist.evaluate.contingency import (
    Contingency,
    acc_from_table,
    ari_from_table,
    nmi_from_table,
)
from clam_dist.metrics import clustering_accuracy
from clam_dist.models.predictor import ClusterPredictor

N, D, K = 1_500, 5, 4


def _energy64(x, protos, beta):
    d2 = ((x[:, None, :].astype(np.float64) - protos[None].astype(np.float64)) ** 2).sum(-1)
    return -torch.logsumexp(torch.from_numpy(-0.5 * beta * d2), 1).numpy() / beta


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Input with labels and generated ids, a model, and its committed assignments."""
    root = tmp_path_factory.mktemp("eval")
    x, y, centers = make_gaussian_mixture(N, D, K, separation=5.0, seed=3)
    beta = 1.5
    p99 = float(np.percentile(_energy64(x, centers, beta), 99))
    art = ModelArtifact(
        method="clam",
        prototypes=centers,
        n_features=D,
        beta=beta,
        alpha=0.1,
        steps=10,
        metric="euclidean",
        meta={"energy_p99": p99, "loss_history": [3.0, 2.0, 1.5, 1.4]},
    )
    save_artifact(art, str(root / "model"))
    write_vectors(str(root / "in"), x, labels=y, rows_per_file=400)
    source = VectorSource(str(root / "in"), label_column="label")
    predictor = ClusterPredictor.from_artifact(art)
    prefix = OutputPrefix(str(root / "out"))
    staging = prefix.prepare(False)
    spath = prefix.staging_path(staging)
    prefix.fs.makedirs(spath, exist_ok=True)
    ids, clusters = [], []
    for i, b in enumerate(iter_batches(source, batch_rows=300, shuffle=False)):
        pred = predictor.predict(b.x, ("energy",))
        t = pa.table(
            {
                "id": pa.array(b.ids),
                "cluster": pred["cluster"],
                "distance": pred["distance"],
                "energy": pred["energy"],
                "label": b.labels,
            }
        )
        pq.write_table(t, f"{spath}/b{i:03d}.parquet")
        ids.append(b.ids)
        clusters.append(pred["cluster"])
    prefix.commit(
        staging,
        N,
        {"k": K, "columns": ["id", "cluster", "distance", "energy", "label"], "drift": {}},
    )
    return {
        "root": root,
        "x": x,
        "y": y,
        "centers": centers,
        "beta": beta,
        "p99": p99,
        "clusters": np.concatenate(clusters),  # in file order = x order
        "predictor": predictor,
    }


def _config(run, **kw) -> EvaluateConfig:
    root = run["root"]
    base = dict(
        input=str(root / "in"),
        assignments=str(root / "out"),
        model=str(root / "model"),
        report_dir=str(root / "report"),
        label_column="label",
        sample_size=500,
        seed=1,
    )
    return EvaluateConfig(**(base | kw))


def test_metrics_match_float64_references(run):
    res = run_evaluation(_config(run))
    m = res.metrics
    x, y, labels = run["x"], run["y"], run["clusters"]
    assert m["rows"] == N and m["k"] == K
    sizes = np.bincount(labels, minlength=K)
    assert (m["size_min"], m["size_max"], m["n_nonempty"]) == (sizes.min(), sizes.max(), K)
    ref_inertia = ((x.astype(np.float64) - run["centers"][labels].astype(np.float64)) ** 2).sum()
    assert m["inertia"] == pytest.approx(ref_inertia, rel=1e-5)
    energy = _energy64(x, run["centers"], run["beta"])
    assert m["mean_energy"] == pytest.approx(energy.mean(), rel=1e-4, abs=1e-5)
    assert m["drift_share_above_train_energy_p99"] == pytest.approx(
        (energy > run["p99"]).mean(), abs=2 / N
    )
    # external metrics over EVERY row (label passed through to the output)
    assert m["external_metrics_on"] == f"all rows ({N})"
    assert m["nmi"] == pytest.approx(normalized_mutual_info_score(y, labels), abs=1e-12)
    assert m["ari"] == pytest.approx(adjusted_rand_score(y, labels), abs=1e-12)
    assert m["acc"] == pytest.approx(clustering_accuracy(y, labels), abs=1e-12)
    # Silhouette on the stated sample, with the committed clusters of the sampled rows
    sample = sample_rows(VectorSource(str(run["root"] / "in"), label_column="label"), 500, 1)
    ref_sil = silhouette_score(
        sample.x.astype(np.float64), run["predictor"].predict(sample.x)["cluster"]
    )
    assert m["silhouette_sample_size"] == 500
    assert m["silhouette"] == pytest.approx(ref_sil, abs=1e-6)
    assert m["sample_agreement_with_model"] == 1.0


def test_report_files_exist_and_html_references_them(run):
    res = run_evaluation(_config(run, report_dir=str(run["root"] / "rep2")))
    rep = run["root"] / "rep2"
    html = (rep / "index.html").read_text()
    pngs = ["cluster_sizes.png", "projection.png", "energy.png", "training.png"]
    json_files = ["metrics.json", "cluster_sizes.json", "clusters.json"]
    assert set(pngs + json_files + ["index.html"]) == set(res.files)
    for name in pngs:
        assert (rep / name).read_bytes()[:4] == b"\x89PNG" and (rep / name).stat().st_size > 2000
    # every PNG the report ships is shown by the page, and every file it links exists
    for png in rep.glob("*.png"):
        assert f'src="{png.name}"' in html
    for name in ("metrics.json", "clusters.json", "cluster_sizes.json"):
        assert f'href="{name}"' in html
    assert "<h2>Clusters</h2>" in html and "<h2>Model vs k-means baseline</h2>" in html
    on_disk = json.loads((rep / "metrics.json").read_text())  # strict JSON (no NaN)
    assert on_disk["rows"] == N and on_disk["silhouette_sample_size"] == 500
    assert sum(json.loads((rep / "cluster_sizes.json").read_text())) == N


def test_labels_only_in_input_use_the_sample_and_report_goes_to_s3(run, s3_server):
    # Without a label pass-through in the output, NMI/ARI/ACC come from the sample.
    cfg = _config(
        run,
        report_dir=s3_server.url("eval/report"),
        storage_options=None,
    )
    from clam_dist.evaluate import metrics_at_scale

    metrics, plots = metrics_at_scale.evaluate_run(
        metrics_at_scale.EvalConfig(
            cfg.source(), cfg.assignments, cfg.model, 400, 2, label_column_in_output="nope"
        )
    )
    assert metrics["external_metrics_on"] == "sample (400 rows)" and metrics["nmi"] > 0.5
    from clam_dist.evaluate.report import write_report

    files = write_report(cfg.report_dir, metrics, plots, storage_options=s3_server.storage_options)
    fs, path = OutputPrefix(cfg.report_dir, s3_server.storage_options).fs, "clam-test/eval/report"
    # the report's files plus the commit's records (only recorded files are replaced)
    found = sorted(p.rsplit("/", 1)[-1] for p in fs.find(path))
    assert found == sorted(files + ["_SUCCESS", "_manifest.json"])


def test_refusals_name_the_problem(run, tmp_path):
    with pytest.raises(IncompleteOutputError, match="no _SUCCESS"):
        run_evaluation(_config(run, assignments=str(tmp_path / "nothing")))
    write_vectors(str(tmp_path / "other"), run["x"][:100])
    with pytest.raises(DataError, match="holds 1500 rows but the input .* has 100"):
        run_evaluation(_config(run, input=str(tmp_path / "other"), label_column=None))
    # same row count, other ids: the sampled rows are not in the output
    write_vectors(str(tmp_path / "renamed"), run["x"], rows_per_file=500)
    with pytest.raises(DataError, match="sampled input rows have no assignment"):
        run_evaluation(_config(run, input=str(tmp_path / "renamed"), label_column=None))


def test_contingency_metrics_equal_scikit_learn_streamed_in_batches(rng):
    y = rng.choice(np.array(["cat", "dog", "eel", "fox"]), 3_000)
    c = rng.integers(0, 6, 3_000)
    c[y == "dog"] = 2  # some structure
    table = Contingency(6)
    for r0 in range(0, 3_000, 700):
        table.update(y[r0 : r0 + 700], c[r0 : r0 + 700])
    assert table.n == 3_000
    assert nmi_from_table(table.table) == pytest.approx(normalized_mutual_info_score(y, c), 1e-12)
    assert ari_from_table(table.table) == pytest.approx(adjusted_rand_score(y, c), abs=1e-12)
    assert acc_from_table(table.table) == pytest.approx(clustering_accuracy(y, c), abs=1e-12)
    one = Contingency(3)
    one.update(np.zeros(10, int), np.ones(10, int))
    assert nmi_from_table(one.table) == 1.0 and ari_from_table(one.table) == 1.0


def test_cli_config_file_and_errors(run, tmp_path, capsys):
    from clam_dist.cli import main

    cfg = tmp_path / "eval.toml"
    cfg.write_text(
        f'input = "{run["root"] / "in"}"\nassignments = "{run["root"] / "out"}"\n'
        f'model = "{run["root"] / "model"}"\nsample_size = 300\n'
    )
    assert main(["evaluate", "--config", str(cfg), "--report-dir", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "index.html").exists()
    assert '"silhouette_sample_size": 300' in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("sample_size: lots\n")
    assert main(["evaluate", "--config", str(bad)]) == 2
    assert "sample_size: expected an integer, got 'lots'" in capsys.readouterr().err
    assert main(["evaluate", "--config", str(cfg), "--set", "report_dir="]) == 2
    assert "report_dir: required" in capsys.readouterr().err
    args = ["evaluate", "--config", str(cfg), "--report-dir", str(tmp_path / "r2")]
    assert main([*args, "--assignments", str(tmp_path / "none")]) == 2
    assert "IncompleteOutputError" in capsys.readouterr().err
    other = str(run["root"] / "out")  # the same output listed again counts once
    assert main([*args, "--partitions", other, "--no-kmeans-baseline"]) == 0
    out = capsys.readouterr().out
    assert '"drift_partitions": 1' in out and "kmeans_baseline" not in out


def _committed_rows(run) -> dict:
    from clam_dist.assign.commit import iter_assignments

    cols: dict = {"id": [], "cluster": [], "distance": [], "energy": []}
    for batch in iter_assignments(str(run["root"] / "out"), None, columns=list(cols)):
        for name in cols:
            cols[name].append(batch.column(name).to_numpy(zero_copy_only=False))
    return {name: np.concatenate(v) for name, v in cols.items()}


def test_per_cluster_table_matches_a_full_sort(run):
    res = run_evaluation(_config(run, report_dir=str(run["root"] / "rep3")))
    table = json.loads((run["root"] / "rep3" / "clusters.json").read_text())
    rows = _committed_rows(run)
    assert [c["cluster"] for c in table] == list(range(K))
    for c in table:
        mine = rows["cluster"] == c["cluster"]
        assert c["size"] == mine.sum()
        d64, e64 = rows["distance"][mine].astype(np.float64), rows["energy"][mine]
        assert c["mean_distance"] == pytest.approx(d64.mean(), rel=1e-9)
        assert c["mean_energy"] == pytest.approx(e64.astype(np.float64).mean(), rel=1e-9)
        nearest = rows["id"][mine][np.argsort(d64, kind="stable")[:3]]
        assert c["nearest_ids"] == nearest.tolist()
    html = (run["root"] / "rep3" / "index.html").read_text()
    assert str(table[0]["nearest_ids"][0]) in html
    assert res.metrics["rows"] == N


def test_cluster_table_streamed_in_small_batches_equals_one_sort(rng):
    from clam_dist.evaluate.per_cluster import ClusterTable

    n, k = 2_000, 7
    clusters = rng.integers(0, k, n)
    clusters[clusters == 6] = 5  # an empty cluster
    distances, energies = rng.random(n), rng.normal(size=n)
    ids = np.array([f"row-{i}" for i in range(n)], dtype=object)
    table = ClusterTable(k)
    for r0 in range(0, n, 37):
        sl = slice(r0, r0 + 37)
        ids_in = pa.array(ids[sl]) if r0 % 2 else ids[sl]  # arrow and numpy ids alike
        table.update(clusters[sl], distances[sl], ids_in, energies[sl])
    for c in table.rows():
        mine = clusters == c["cluster"]
        assert c["size"] == mine.sum()
        if not mine.any():
            assert c["mean_distance"] is None and c["nearest_ids"] == []
            continue
        assert c["mean_distance"] == pytest.approx(distances[mine].mean(), rel=1e-12)
        assert c["mean_energy"] == pytest.approx(energies[mine].mean(), rel=1e-12)
        assert c["nearest_ids"] == ids[mine][np.argsort(distances[mine])[:3]].tolist()


def test_kmeans_baseline_is_fitted_and_scored_on_the_same_sample(run):
    from clam_dist import KMeans
    from clam_dist.metrics import silhouette

    m = run_evaluation(_config(run, report_dir=str(run["root"] / "rep4"))).metrics
    sample = sample_rows(VectorSource(str(run["root"] / "in"), label_column="label"), 500, 1)
    z = run["predictor"].to_model_space(np.array(sample.x, dtype=np.float32)).numpy()
    found = KMeans(n_clusters=K, random_state=1).fit(z).labels_
    assert m["kmeans_baseline_silhouette"] == pytest.approx(silhouette(z, found, 500), abs=1e-9)
    assert m["kmeans_baseline_ari"] == pytest.approx(adjusted_rand_score(sample.labels, found))
    clusters = run["predictor"].predict(sample.x)["cluster"]
    assert m["sample_ari"] == pytest.approx(adjusted_rand_score(sample.labels, clusters))
    assert m["kmeans_baseline_on"].startswith("sample (500 rows")
    assert m["kmeans_baseline_ari"] > 0.5  # well-separated mixture: the baseline works
    off = run_evaluation(
        _config(run, report_dir=str(run["root"] / "rep5"), kmeans_baseline=False)
    ).metrics
    assert not any(key.startswith("kmeans_baseline") for key in off)
    tiny = run_evaluation(_config(run, report_dir=str(run["root"] / "rep6"), sample_size=3))
    assert "sample has 3 rows" in tiny.metrics["kmeans_baseline_note"]


def _commit_copy(run, name: str, model: str, partition: str, share: float) -> str:
    """Another committed output (the same rows) whose manifest says which model and
    partition made it and what drift share it measured."""
    from clam_dist.assign.commit import iter_assignments

    prefix = OutputPrefix(str(run["root"] / name))
    staging = prefix.prepare(False)
    spath = prefix.staging_path(staging)
    prefix.fs.makedirs(spath, exist_ok=True)
    for i, batch in enumerate(iter_assignments(str(run["root"] / "out"), None)):
        pq.write_table(pa.Table.from_batches([batch]), f"{spath}/b{i:03d}.parquet")
    drift = {"share_above": share, "energy_p99": run["p99"], "rows": N}
    manifest = {"k": K, "model": model, "partition": partition, "drift": drift}
    prefix.commit(staging, N, manifest | {"columns": ["id", "cluster", "distance", "energy"]})
    return str(run["root"] / name)


def test_drift_over_partitions_of_one_model(run, tmp_path):
    model = str(run["root"] / "model")
    may = _commit_copy(run, "out-may", model, "2026-05", 0.012)
    june = _commit_copy(run, "out-june", model, "2026-06", 0.31)
    rep = tmp_path / "rep"
    res = run_evaluation(_config(run, report_dir=str(rep), partitions=f"{may},{june}"))
    assert res.metrics["drift_partitions"] == 3
    parts = json.loads((rep / "partitions.json").read_text())
    assert [p["partition"] for p in parts] == [None, "2026-05", "2026-06"]
    assert [p["share_above"] for p in parts[1:]] == [0.012, 0.31]
    html = (rep / "index.html").read_text()
    assert "<h2>Drift by partition</h2>" in html and 'src="drift.png"' in html
    assert (rep / "drift.png").read_bytes()[:4] == b"\x89PNG"
    other = _commit_copy(run, "out-other", str(tmp_path / "another-model"), "2026-07", 0.0)
    with pytest.raises(DataError, match="out-other was assigned with model .*another-model"):
        run_evaluation(_config(run, report_dir=str(tmp_path / "r2"), partitions=[other]))
    assert not (tmp_path / "r2").exists()  # refused before any report file was written


@pytest.mark.parametrize("k", [16, 65_536])
def test_the_size_plot_draws_a_fixed_number_of_shapes_at_large_k(k):
    """65,536 bars (one matplotlib patch each) took minutes in a 10M-row report: beyond
    SIZE_BARS_UP_TO clusters the sorted sizes are one filled step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clam_dist.evaluate.report import SIZE_BARS_UP_TO, _sizes_figure

    sizes = np.random.default_rng(0).integers(1, 500, k)
    fig = _sizes_figure(sizes)
    ax = fig.axes[0]
    assert len(ax.patches) == (k if k <= SIZE_BARS_UP_TO else 1)
    if k > SIZE_BARS_UP_TO:  # the one shape spans every cluster, largest first
        assert ax.get_title() == f"Cluster sizes (k = {k})"
        x0, x1 = ax.get_xlim()
        assert x0 <= 0 and x1 >= k
    plt.close(fig)
