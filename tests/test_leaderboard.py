"""The leaderboard as a reader gets it: the exact Markdown and LaTeX a user pastes into a paper,
the HTML table's cells, and the training curves' plot, for a store written by hand.

In-process and fast (no server), so mutation testing sees ``service/client/report/leaderboard.py``."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from service.client.report import leaderboard
from service.client.store import ResultsStore, Row, conventions_hash

from .test_store import record, record_of_metric


@pytest.fixture
def store(tmp_path):
    """Set5 ×4 PSNR in RGB (EDSR, a model whose name holds a | and a mean over 2 of the 3 images)
    and in Y with a crop of 4 (EDSR again); DIV2K ×4 FID; an unnamed dataset without a scale for NIQE."""
    rgb, y = record(), record(y_channel=True, crop_border=4)
    fid = record_of_metric("fid", dict(convention="torch-fidelity"), lower_is_better=True)
    niqe = record_of_metric("niqe", dict(convention="matlab"), lower_is_better=True)
    with ResultsStore(tmp_path / "r.db") as opened:
        rows = [Row("EDSR", "Set5", 4, f"img{i}", "psnr", v, conventions_hash(rgb)) for i, v in enumerate((30.0, 31.0, 32.0))]
        rows += [Row("Swin|IR", "Set5", 4, f"img{i}", "psnr", v, conventions_hash(rgb)) for i, v in enumerate((31.0, 32.0, 34.5))]
        rows += [Row("Half_net", "Set5", 4, f"img{i}", "psnr", 40.0, conventions_hash(rgb)) for i in range(2)]
        opened.add(rows, rgb)
        opened.add([Row("EDSR", "Set5", 4, f"img{i}", "psnr", 33.0, conventions_hash(y)) for i in range(3)], y)
        opened.add([Row(m, "DIV2K", 4, "(set)", "fid", v, conventions_hash(fid)) for m, v in (("B&C", 25.0), ("A", 20.0))], fid)
        opened.add([Row("M", "", 0, image, "niqe", v, conventions_hash(niqe)) for image, v in (("a", 4.5), ("b", 5.0))], niqe)
        yield opened


def test_boards_in_dataset_order_with_their_titles_directions_and_groups(store):
    boards = leaderboard.boards(store)
    assert [(b.title, b.metric, b.lower_is_better) for b in boards] == [
        ("unnamed", "niqe", True),
        ("DIV2K ×4", "fid", True),
        ("Set5 ×4", "psnr", False),
    ]
    psnr = boards[2]
    assert [[s.label for s in g.standings] for g in psnr.groups] == [["Swin|IR", "EDSR"], ["EDSR"], ["Half_net"]]
    assert [g.differs for g in psnr.groups] == [[], ["crop 4 vs 0", "Y vs RGB"], ["2 of 3 images"]]
    assert [(s.mean, s.images) for s in psnr.groups[0].standings] == [(pytest.approx(32.5), 3), (31.0, 3)]
    assert [s.label for s in boards[1].groups[0].standings] == ["A", "B&C"]  # lower first


def test_the_markdown_is_exactly_what_a_reader_pastes(store):
    expected = """\
# Leaderboard

Models are ranked only among numbers computed under the same conventions. \
values: the values averaged, one per image (fid and kid: one for the whole set).

## unnamed · niqe ↓

| rank | model | mean | values |
|---|---|---|---|
| 1 | M | 4.7500 | 2 |

## DIV2K ×4 · fid ↓

| rank | model | mean | values |
|---|---|---|---|
| 1 | A | 20.0000 | 1 |
| 2 | B&C | 25.0000 | 1 |

## Set5 ×4 · psnr ↑

| rank | model | mean | values |
|---|---|---|---|
| 1 | Swin\\|IR | 32.50 | 3 |
| 2 | EDSR | 31.00 | 3 |

Not comparable with the ranking above (this group vs it): crop 4 vs 0; Y vs RGB.

| rank | model | mean | values |
|---|---|---|---|
| 1 | EDSR | 33.00 | 3 |

Not comparable with the ranking above (this group vs it): 2 of 3 images.

| rank | model | mean | values |
|---|---|---|---|
| 1 | Half_net | 40.00 | 2 |
"""
    assert leaderboard.markdown(leaderboard.boards(store)) == expected


def test_the_latex_is_one_booktabs_table_per_group_with_what_differs_in_its_caption(store):
    def table(caption: str, rows: str) -> str:
        return (
            "\\begin{table}[t]\n\\centering\n\\caption{" + caption + "}\n\\begin{tabular}{rlrr}\n\\toprule\n"
            "rank & model & mean & values \\\\\n\\midrule\n" + rows + "\n\\bottomrule\n\\end{tabular}\n\\end{table}"
        )

    expected = "\n\n".join(
        [
            table("unnamed, niqe", "1 & M & 4.7500 & 2 \\\\"),
            table("DIV2K $\\times$4, fid", "1 & A & 20.0000 & 1 \\\\\n2 & B\\&C & 25.0000 & 1 \\\\"),
            table("Set5 $\\times$4, psnr", "1 & Swin\\textbar{}IR & 32.50 & 3 \\\\\n2 & EDSR & 31.00 & 3 \\\\"),
            table("Set5 $\\times$4, psnr (differs: crop 4 vs 0; Y vs RGB)", "1 & EDSR & 33.00 & 3 \\\\"),
            table("Set5 $\\times$4, psnr (differs: 2 of 3 images)", "1 & Half\\_net & 40.00 & 2 \\\\"),
        ]
    )
    assert leaderboard.latex(leaderboard.boards(store)) == expected + "\n"


class Cells(HTMLParser):
    """The text of an HTML fragment's headings, warnings and table cells, in order, with the tags
    that carry them and their attributes."""

    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, dict, str]] = []
        self._open: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self._open.append((tag, dict(attrs)))
        self.found.append((tag, dict(attrs), ""))

    def handle_endtag(self, tag):
        self._open.pop()

    def handle_data(self, data):
        tag, attrs, text = self.found[-1]
        self.found[-1] = (tag, attrs, text + data)


def parsed(page: str) -> list[tuple[str, dict, str]]:
    parser = Cells()
    parser.feed(page)
    parser.close()
    assert not parser._open, "every tag is closed"
    return parser.found


def test_the_html_tables_hold_the_same_cells_with_the_model_column_left_aligned(store):
    found = parsed(leaderboard.html(leaderboard.boards(store)))
    assert found[0][:2] == ("p", {"class": "note"}) and found[0][2] == (
        "Models are ranked only among numbers computed under the same conventions; a number computed otherwise stands in a "
        "group of its own, which says what differs. values: the values averaged, one per image (fid and kid: one for the whole set)."
    )
    headings = [text for tag, _, text in found if tag == "h3"]
    assert headings == ["unnamed · niqe ↓", "DIV2K ×4 · fid ↓", "Set5 ×4 · psnr ↑"]
    warnings = [text for tag, attrs, text in found if tag == "p" and attrs == {"class": "warn"}]
    assert warnings == [
        "Not comparable with the ranking above (this group vs it): crop 4 vs 0; Y vs RGB.",
        "Not comparable with the ranking above (this group vs it): 2 of 3 images.",
    ]
    cells = [text for tag, _, text in found if tag in ("td", "th")]
    header = ["rank", "model", "mean", "values"]
    assert cells == [
        *header, "1", "M", "4.7500", "2",
        *header, "1", "A", "20.0000", "1", "2", "B&C", "25.0000", "1",
        *header, "1", "Swin|IR", "32.50", "3", "2", "EDSR", "31.00", "3",
        *header, "1", "EDSR", "33.00", "3",
        *header, "1", "Half_net", "40.00", "2",
    ]  # fmt: skip
    aligned = [text for tag, attrs, text in found if tag in ("td", "th") and attrs.get("style") == "text-align:left"]
    assert aligned == ["model", "M", "model", "A", "B&C", "model", "Swin|IR", "EDSR", "model", "EDSR", "model", "Half_net"]
    assert "B&amp;C" in leaderboard.html(leaderboard.boards(store))  # escaped, not raw markup


def test_the_training_curves_plot_a_line_per_model_and_star_each_best_step(tmp_path):
    """Two runs on one dataset and metric share one plot; a third metric gets its own. Each
    line has its model's colour and a star at its best step, named in the annotation."""
    ssim = record_of_metric("ssim", dict(crop_border=0), lower_is_better=False)
    lpips = record_of_metric("lpips", dict(), lower_is_better=True)
    with ResultsStore(tmp_path / "r.db") as opened:
        rows = [Row("run-a", "val", 2, "x", "ssim", v, conventions_hash(ssim), step=s) for s, v in ((0, 0.5), (10, 0.75), (20, 0.7))]
        rows += [Row("run-b", "val", 2, "x", "ssim", v, conventions_hash(ssim), step=s) for s, v in ((0, 0.6), (10, 0.65), (20, 0.8))]
        opened.add(rows, ssim)
        opened.add([Row("run-a", "val", 2, "x", "lpips", v, conventions_hash(lpips), step=s) for s, v in ((0, 0.3), (5, 0.2))], lpips)
        found = leaderboard.curves(opened)
    bests = [("run-a", "lpips", (5, 0.2)), ("run-a", "ssim", (10, 0.75)), ("run-b", "ssim", (20, 0.8))]
    assert [(c.model, c.metric, c.best) for c in found] == bests
    page = leaderboard.curves_html(found)
    figures = re.findall(r'<figure class="plot">(.*?)</figure>', page, flags=re.S)
    assert len(figures) == 2 and page.startswith('<div class="plots">')
    lpips_plot, ssim_plot = figures
    assert lpips_plot.endswith("<figcaption>val · lpips</figcaption>") and ssim_plot.endswith("<figcaption>val · ssim</figcaption>")
    texts = lambda svg: re.findall(r"<text[^>]*>([^<]*)</text>", svg)  # noqa: E731
    assert {"step", "lpips ↓", "best: step 5", "run-a"} <= set(texts(lpips_plot))
    assert {"step", "ssim ↑", "best: step 10", "best: step 20", "run-a", "run-b"} <= set(texts(ssim_plot))
    assert "#1f77b4" in ssim_plot and "#ff7f0e" in ssim_plot and "#ff7f0e" not in lpips_plot  # a colour per model
    assert page.endswith('<p class="note">Mean over the validation images at each step; ★ marks each model\'s best step.</p>')


def test_the_curve_figure_draws_each_models_line_and_best_step_in_its_colour(tmp_path):
    import matplotlib.pyplot as plt

    runs = [
        leaderboard.Curve("run-a", "val", "lpips", True, [(0, 0.3), (5, 0.2), (10, 0.25)]),
        leaderboard.Curve("run-b", "val", "lpips", True, [(0, 0.4), (5, 0.35)]),
    ]
    figure = leaderboard.curve_figure(runs)
    (ax,) = figure.axes
    lines = ax.get_lines()
    assert [(list(line.get_xdata()), list(line.get_ydata())) for line in lines] == [
        ([0, 5, 10], [0.3, 0.2, 0.25]),
        ([5], [0.2]),
        ([0, 5], [0.4, 0.35]),
        ([5], [0.35]),
    ]
    assert [line.get_color() for line in lines] == ["#1f77b4", "#1f77b4", "#ff7f0e", "#ff7f0e"]
    assert [line.get_marker() for line in lines] == ["o", "*", "o", "*"] and [line.get_linestyle() for line in lines][1::2] == ["None"] * 2
    assert [line.get_markersize() for line in lines] == [3, 14, 3, 14]
    assert [(text.get_text(), text.xy, text.xyann, text.get_fontsize()) for text in ax.texts] == [
        ("best: step 5", (5, 0.2), (6, 6), 8),
        ("best: step 5", (5, 0.35), (6, 6), 8),
    ]
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "lpips ↓"
    legend = ax.get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["run-a", "run-b"] and not legend.get_frame_on()
    assert {text.get_fontsize() for text in legend.get_texts()} == {8}
    assert tuple(figure.get_size_inches()) == (5.2, 3.2)
    plt.close(figure)


def test_two_plots_follow_each_other_in_the_page(tmp_path):
    runs = [leaderboard.Curve("r", "val", metric, False, [(0, 1.0), (1, 2.0)]) for metric in ("psnr", "ssim")]
    page = leaderboard.curves_html(runs)
    assert page.count('</figure><figure class="plot">') == 1


def test_a_run_stands_by_its_earliest_best_step_and_a_checkpoint_or_one_step_is_labelled(tmp_path):
    lpips = record_of_metric("lpips", dict(), lower_is_better=True)
    psnr = record()
    with ResultsStore(tmp_path / "r.db") as opened:
        rows = [
            Row("run", "val", 2, "x", "lpips", v, conventions_hash(lpips), step=s) for s, v in ((0, 0.3), (5, 0.2), (9, 0.2), (12, 0.4))
        ]
        rows += [Row("once", "val", 2, "x", "lpips", 0.5, conventions_hash(lpips), step=0)]
        opened.add(rows, lpips)
        rows = [Row("run", "val", 2, "x", "psnr", v, conventions_hash(psnr), step=s) for s, v in ((0, 30.0), (5, 31.0), (9, 31.0))]
        rows += [Row("net", "val", 2, "x", "psnr", 29.0, conventions_hash(psnr), checkpoint="ep10")]
        rows += [Row("net", "val", 2, "x", "psnr", 29.5, conventions_hash(psnr), checkpoint="ep20")]
        opened.add(rows, psnr)
        by_metric = {board.metric: board for board in leaderboard.boards(opened)}
        found = leaderboard.curves(opened)
    assert [(s.label, s.mean) for s in by_metric["lpips"].groups[0].standings] == [("run (step 5, best of 4)", 0.2), ("once (step 0)", 0.5)]
    standings = [(s.label, s.mean) for s in by_metric["psnr"].groups[0].standings]
    assert standings == [("run (step 5, best of 3)", 31.0), ("net @ ep20", 29.5), ("net @ ep10", 29.0)]
    assert [(c.model, c.metric) for c in found] == [("run", "lpips"), ("run", "psnr")]  # one step is no curve


def test_components_read_their_metrics_direction_and_values_that_are_not_finite_are_left_out(tmp_path):
    kid = record_of_metric("kid", dict(subsets=100), lower_is_better=True)
    with ResultsStore(tmp_path / "r.db") as opened:
        rows = [Row(m, "DIV2K", 4, "(set)", "kid.std", v, conventions_hash(kid)) for m, v in (("A", 0.02), ("B", 0.01))]
        rows += [Row("C", "DIV2K", 4, "(set)", "kid.std", None, conventions_hash(kid))]
        rows += [Row("run", "DIV2K", 4, "(set)", "kid.std", v, conventions_hash(kid), step=s) for s, v in ((1, None), (2, 0.5), (3, 0.4))]
        opened.add(rows, kid)
        (board,) = leaderboard.boards(opened)
        (curve,) = leaderboard.curves(opened)
    assert board.metric == "kid.std" and board.lower_is_better
    assert [s.label for s in board.groups[0].standings] == ["B", "A", "run (step 3, best of 2)"]  # C scored nothing finite
    assert curve.points == [(2, 0.5), (3, 0.4)]


def test_a_server_upgrade_that_keeps_a_metrics_conventions_keeps_one_ranking(tmp_path):
    """Two records that differ outside the metric (their version) and list its options in
    another order: one convention, one group."""
    old, new = record(), record()
    new["version"] = "2"
    new["metrics"]["psnr"]["options"] = dict(reversed(list(new["metrics"]["psnr"]["options"].items())))
    with ResultsStore(tmp_path / "r.db") as opened:
        opened.add([Row("A", "Set5", 4, "x", "psnr", 30.0, conventions_hash(old))], old)
        opened.add([Row("B", "Set5", 4, "x", "psnr", 31.0, conventions_hash(new))], new)
        (board,) = leaderboard.boards(opened)
    assert [[s.label for s in g.standings] for g in board.groups] == [["B", "A"]]


def test_on_equal_group_sizes_the_convention_stored_first_is_the_reference(tmp_path):
    crop4, crop0 = record(crop_border=4), record(crop_border=0)  # crop 4 stored first; its JSON sorts after crop 0's
    with ResultsStore(tmp_path / "r.db") as opened:
        opened.add([Row("A", "Set5", 4, "x", "psnr", 30.0, conventions_hash(crop4))], crop4)
        opened.add([Row("B", "Set5", 4, "x", "psnr", 31.0, conventions_hash(crop0))], crop0)
        (board,) = leaderboard.boards(opened)
    assert [g.standings[0].label for g in board.groups] == ["A", "B"] and board.groups[1].differs == ["crop 0 vs 4"]


def test_a_mean_over_other_images_says_how_many_it_shares(tmp_path):
    conventions = record()
    digest = conventions_hash(conventions)
    with ResultsStore(tmp_path / "r.db") as opened:
        rows = [Row(m, "Set5", 4, f"img{i}", "psnr", 30.0, digest) for m in ("A", "B") for i in range(3)]
        rows += [Row("C", "Set5", 4, name, "psnr", 30.0, digest) for name in ("img0", "other")]
        opened.add(rows, conventions)
        (board,) = leaderboard.boards(opened)
    assert board.groups[1].differs == ["other images (1 of 2 shared)"]


def test_what_differs_names_weights_on_one_side_only_and_option_values_both_ways():
    base = leaderboard.metric_convention(record(), "psnr")
    assert leaderboard.metric_convention(dict(record(), metrics={"psnr": dict(options={}, lower_is_better=False)}), "psnr")["weights"] == {}
    other = dict(base, options=dict(base["options"], crop_border=8), weights={"vgg16": "b" * 64})
    assert leaderboard.describe_difference(
        dict(base, options=dict(base["options"], extra=1)), dict(other, options=dict(other["options"], extra=2)), "psnr"
    ) == [
        "crop 8 vs 0",
        "extra 2 vs 1",
        f"vgg16 weights sha {'b' * 8}… vs none (random weights)",
    ]
    assert leaderboard.describe_difference(dict(base, weights={"vgg19": "a" * 64}), dict(base, weights={"vgg16": "c" * 64}), "psnr") == [
        f"vgg16 weights sha {'c' * 8}… vs none (random weights)",
        f"vgg19 weights sha none (random weights) vs {'a' * 8}…",
    ]


def test_near_ties_get_decimals_up_to_eight_and_only_where_neighbours_print_alike(tmp_path):
    def printed(values: list[float]) -> list[tuple[int, str]]:
        group = leaderboard.Group({}, [leaderboard.Standing(f"m{i}", v, 1) for i, v in enumerate(values)])
        board = leaderboard.Board("Set5", 4, "psnr", False, [group])
        return [(rank, mean) for rank, _, mean, _ in leaderboard._rows(board, group)]

    assert printed([2.004, 2.001, 1.5]) == [(1, "2.004"), (2, "2.001"), (3, "1.500")]  # 2 decimals would tie the first two
    assert printed([1.000000002, 1.000000001]) == [(1, "1.00000000"), (2, "1.00000000")]  # 8 at most: ranks still differ
    assert printed([3.0, 2.5, 2.5]) == [(1, "3.00"), (2, "2.50"), (2, "2.50")]
