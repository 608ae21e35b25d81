"""The keys a W&B view names, read from its spec as W&B stores it (the JSON `ichseg dashboard
--dry-run` writes), independently of how ichseg built it."""

from __future__ import annotations


def spec_keys(data: dict) -> set[tuple[str, str]]:
    """(kind, key) of every key the spec's panels and runset grouping name: `history` keys of
    line plots and media, `summary` keys of parallel coordinates and tables, `config` keys."""
    found = set()
    section = data["spec"]["section"]
    for group in section["runSets"][0]["grouping"]:
        found.add(("config", group["name"].replace(".value", "")))
    for item in section["panelBankConfig"]["sections"]:
        for panel in item["panels"]:
            kind, config = panel["viewType"], panel["config"]
            if kind == "Run History Line Plot":
                found |= {("history", m) for m in [config["xAxis"], *config["metrics"]]}
                found.add(("config", config["groupBy"].replace(".value", "")))
            elif kind == "Parallel Coordinates Plot":
                for column in config["columns"]:
                    where, _, key = column["accessor"].partition(":")
                    found.add((where, key.replace(".value", "")))
            elif kind == "Media Browser":
                found |= {("history", key) for key in config["mediaKeys"]}
            elif kind == "Weave":
                inputs = config["panel2Config"]["exp"]["fromOp"]["inputs"]
                found.add(("summary", inputs["key"]["val"]))
            else:
                assert kind == "Markdown Panel", kind
    return found
