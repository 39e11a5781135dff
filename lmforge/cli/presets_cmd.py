"""`lmforge presets`: list the model presets with one line each."""

from lmforge.presets import all_presets


def add_parser(sub):
    return sub.add_parser(
        "presets", help="list model presets", description="List the model presets, one line each."
    )


def run(args) -> int:
    presets = all_presets()
    width = max(len(n) for n in presets)
    family_width = max(len(e["family"]) for e in presets.values())
    for name, entry in presets.items():
        print(f"{name:<{width}}  {entry['family']:<{family_width}}  {entry.get('about', '')}")
    return 0
