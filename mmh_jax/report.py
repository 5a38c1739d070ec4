"""Report writing: markdown tables, JSON and figures (matplotlib, headless).

Pure functions of already-computed results; no estimator runs here.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import secrets
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["format_value", "html_report", "markdown_table", "plot_flipd_curves", "write_json", "write_text"]


def format_value(v: Any, digits: int = 3) -> str:
    """Numbers to short strings; NaN shows as ``nan``; other values via ``str``.

    Args:
      v: any value; ints and bools print as they are, floats with ``digits`` decimals (or
        ``digits`` significant digits in scientific notation when ≥ 1e4 or < 1e-3).
      digits: precision.

    Returns:
      the string.

    Examples:
      >>> [format_value(v) for v in (3, 0.25, 12345.0, 2e-5, float("nan"), True, "x")]
      ['3', '0.250', '1.23e+04', '2e-05', 'nan', 'True', 'x']
    """
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.{digits}f}"
    return str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured markdown table of ``rows`` (dicts), columns in the given order.

    Returns:
      the table as one string (empty for no rows); values through
      [`format_value`][mmh_jax.report.format_value] with ``|`` escaped, missing entries empty.

    Examples:
      >>> print(markdown_table([{"a": 1, "b": 0.5}]))
      | a | b |
      |---|---|
      | 1 | 0.500 |
    """
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(format_value(r.get(c, "")).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines)


def write_text(path: str, text: str) -> None:
    """Write atomically: a temporary file in the same directory, then ``os.replace``.

    The file gets the mode a plain ``open(path, "w")`` gives a new file: 0666 less the umask
    (0644 under the usual umask 022), so whoever may read the run's PNGs may read its report too.
    The temporary file is created with ``os.open(..., 0o666)``, so the kernel applies the umask
    (and a directory's default ACL) exactly as for ``open``; the process umask is never changed.
    An interrupted or failed write leaves any earlier file at ``path`` as it was.

    Raises:
      OSError: the directory cannot be created or written (the temporary file is removed).

    Examples:
      >>> import os, stat, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "sub", "note.txt")
      >>> write_text(path, "hello")
      >>> import pathlib
      >>> pathlib.Path(path).read_text(), sorted(os.listdir(os.path.dirname(path)))
      ('hello', ['note.txt'])
      >>> umask = os.umask(0o022); _ = os.umask(umask)  # read the umask back (doctest only)
      >>> stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
      True
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = _create_temporary(directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _create_temporary(directory: str) -> tuple[int, str]:
    """A new, exclusively created file in ``directory`` with mode 0666 less the umask: ``(fd, path)``.

    Unlike ``tempfile.mkstemp`` (always 0600, for secrets), the mode is what ``open`` would give.
    """
    for _ in range(100):
        tmp = os.path.join(directory, f".tmp-{secrets.token_hex(6)}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name in {directory!r}")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
        arr = np.asarray(obj)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(float(obj)) else float(obj)
    return obj


def write_json(path: str, obj: Any) -> None:
    """JSON with numpy/JAX values converted (NaN becomes null), written atomically.

    Raises:
      OSError: as [`write_text`][mmh_jax.report.write_text].
      TypeError: a value JSON cannot represent even after conversion.

    Examples:
      >>> import json, os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "m.json")
      >>> write_json(path, {"a": np.float32(0.5), "b": np.arange(2), "c": float("nan")})
      >>> import pathlib
      >>> json.loads(pathlib.Path(path).read_text())
      {'a': 0.5, 'b': [0, 1], 'c': None}
    """
    write_text(path, json.dumps(_jsonable(obj), indent=2) + "\n")


def plot_flipd_curves(
    path: str,
    panels: Iterable[Mapping[str, Any]],
) -> None:
    """One panel per case: FLIPD curves over log t₀, the true LID as a dashed line, knees as dots.

    Each panel is a mapping with ``title``, ``t0s`` (n,), ``curves`` (m, n), ``knees_t`` (m,),
    ``knees_value`` (m,) and ``truth`` (m,) (true LID of each curve's point).

    Examples:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "curves.png")
      >>> t0s = np.geomspace(1e-3, 1.0, 5)
      >>> plot_flipd_curves(path, [{"title": "toy", "t0s": t0s, "curves": np.ones((1, 5)),
      ...                           "knees_t": [0.01], "knees_value": [1.0], "truth": [1]}])
      >>> os.path.getsize(path) > 0
      True
    """
    from mmh_jax._plotting import pyplot

    plt = pyplot()

    panels = list(panels)
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, p in zip(axes.flat, panels):
        t0s = np.asarray(p["t0s"])
        truth = np.asarray(p["truth"])
        colors = plt.cm.viridis(np.linspace(0.0, 0.9, max(len(truth), 1)))
        for c, curve, kt, kv, tr in zip(colors, np.asarray(p["curves"]), p["knees_t"], p["knees_value"], truth):
            ax.plot(t0s, curve, color=c, lw=1.2)
            ax.plot([kt], [kv], "o", color=c, ms=5, mec="k", mew=0.5)
        for tr in np.unique(truth):
            ax.axhline(float(tr), color="0.4", ls="--", lw=0.8)
        lo, hi = ax.get_ylim()  # keep the integer scale visible even when curves are flat (e.g. LID 0)
        ax.set_ylim(min(lo, -0.5), max(hi, float(np.max(truth)) + 0.5))
        ax.set_xscale("log")
        ax.set_title(p["title"], fontsize=9)
        ax.set_xlabel("t₀")
        ax.set_ylabel("FLIPD")
    fig.suptitle("FLIPD curves (dots: kneedle knee; dashed: true LID)", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def html_report(title: str, sections: Sequence[Mapping[str, Any]], *, base_dir: str, footer: str = "",
                banner: str = "") -> str:
    """A self-contained HTML page: each section's reading, table and figures (PNGs embedded as base64).

    ``banner`` (plain text), when given, is shown above everything else in a warning box (e.g. "this
    is a smoke run").

    Each section is a mapping with ``title``, optional ``reading`` (plain text), ``rows`` (a list of
    mappings shown as a table) and ``figures`` (PNG paths relative to ``base_dir``; missing ones are
    listed as missing, never silently dropped).

    Returns:
      the HTML page as one string (no external files: figures are data URIs).

    Examples:
      >>> page = html_report("r", [{"title": "toy", "reading": "a < b", "rows": [{"k": 1}]}], base_dir=".")
      >>> "<h2>toy</h2>" in page and "a &lt; b" in page
      True
      >>> "class='banner'" in html_report("r", [], base_dir=".", banner="smoke run")
      True
    """
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}"
        "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
        "font-size:0.9em;text-align:left}img{max-width:100%;margin:0.4em 0}.reading{background:#f4f6f8;"
        "padding:0.6em 1em;border-left:4px solid #4a7}.banner{background:#fff3cd;border:2px solid #e0a800;"
        "padding:0.6em 1em;font-weight:bold}</style></head><body>",
    ]
    if banner:
        parts.append(f"<p class='banner' role='alert'>{html.escape(banner)}</p>")
    parts.append(f"<h1>{html.escape(title)}</h1>")
    for sec in sections:
        parts.append(f"<h2>{html.escape(str(sec['title']))}</h2>")
        if sec.get("reading"):
            parts.append(f"<p class='reading'>{html.escape(str(sec['reading']))}</p>")
        rows = list(sec.get("rows") or [])
        if rows:
            cols = list(dict.fromkeys(k for r in rows for k in r))
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>")
            for r in rows:
                parts.append("<tr>" + "".join(f"<td>{html.escape(format_value(r.get(c, '')))}</td>" for c in cols)
                             + "</tr>")
            parts.append("</table>")
        for fig in sec.get("figures") or []:
            path = os.path.join(base_dir, fig)
            if os.path.exists(path):
                with open(path, "rb") as fh:
                    data = base64.b64encode(fh.read()).decode("ascii")
                parts.append(f"<div><img alt='{html.escape(fig)}' src='data:image/png;base64,{data}'></div>")
            else:
                parts.append(f"<p><em>figure {html.escape(fig)} is missing</em></p>")
    if footer:
        parts.append(f"<hr><p style='font-size:0.8em;color:#666'>{html.escape(footer)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
