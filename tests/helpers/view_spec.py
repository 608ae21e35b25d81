"""The keys a W&B view names, read from its spec as W&B stores it (the JSON `ichseg dashboard
--dry-run` writes), independently of how ichseg built it."""

from __future__ import annotations


def panels(data: dict) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(section, panel title, its (kind, key)s) of every panel of the spec: `history` keys of
    line plots and media, `summary` keys of parallel coordinates and tables, `config` keys."""
    found = []
    for item in data["spec"]["section"]["panelBankConfig"]["sections"]:
        for panel in item["panels"]:
            kind, config = panel["viewType"], panel["config"]
            title = config.get("chartTitle")
            if kind == "Run History Line Plot":
                keys = [("history", m) for m in [config["xAxis"], *config["metrics"]]]
                keys.append(("config", config["groupBy"].replace(".value", "")))
            elif kind == "Parallel Coordinates Plot":
                keys = []
                for column in config["columns"]:
                    where, _, key = column["accessor"].partition(":")
                    keys.append((where, key.replace(".value", "")))
            elif kind == "Media Browser":
                keys = [("history", key) for key in config["mediaKeys"]]
            elif kind == "Weave":
                name = config["panel2Config"]["exp"]["fromOp"]["inputs"]["key"]["val"]
                keys, title = [("summary", name)], f"table `{name}`"
            else:
                assert kind == "Markdown Panel", kind
                keys, title = [], "what the protocol averages"
            found.append((item["name"], title, keys))
    return found


def spec_keys(data: dict) -> set[tuple[str, str]]:
    """(kind, key) of every key the spec's panels and runset grouping name."""
    grouping = data["spec"]["section"]["runSets"][0]["grouping"]
    found = {("config", group["name"].replace(".value", "")) for group in grouping}
    return found | {key for _, _, keys in panels(data) for key in keys}


def panels_table(data: dict) -> str:
    """The spec's sections and panels as a Markdown table (docs/sweeps.md holds it)."""
    lines = ["| Section | Panel | Keys |", "|---|---|---|"]
    for section, title, keys in panels(data):
        named = ", ".join(dict.fromkeys(f"`{key}`" for _, key in keys)) or "—"
        lines.append(f"| {section} | {title} | {named} |")
    return "\n".join(lines) + "\n"
