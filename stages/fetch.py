"""fetch stage: a source named torchvision:<Name> is made to be in torchvision_root (read as it is when its files
are there, offline; else downloaded once) and described in ./torchvision:<Name>, the path prepare depends on as
${source}: its raw files and their sha256, so that dvc.lock holds the dataset's version. A folder or .zip source
needs nothing fetched (prepare's ${source} dep is the folder itself)."""
import argparse
from pathlib import Path

from dcgan import cli, params, torchvision_source


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", type=Path, default=params.PARAMS_FILE)
    ap.add_argument("--out", type=Path, default=Path("data/source.json"),
                    help="what the source is, for prepare to run after this stage")
    ap.add_argument("--offline", action="store_true", help="never download: fail naming the files to put in place")
    args = ap.parse_args()
    p = params.load("fetch", args.params)
    dataset = torchvision_source.parse(p["source"])
    if dataset is None:
        content = {"source": p["source"]}
    else:
        root = torchvision_source.resolve_root(p["torchvision_root"])
        content = torchvision_source.fetch(dataset, root, download=not args.offline)
        torchvision_source.write_receipt(Path(p["source"]), content)
        size = sum(f["bytes"] for f in content["files"].values())
        print(f"{p['source']}: {len(content['files'])} files, {size / 1e6:.1f} MB in {root} -> ./{p['source']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torchvision_source.write_receipt(args.out, content)


if __name__ == "__main__":
    cli.run(main)
