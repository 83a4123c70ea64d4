"""report: report/index.html, every experiment side by side (params, scores, grids, curves), and a page per
experiment; opens from disk with no network.

    python -m stages.report                                  # the workspace, the branch's commits, every dvc exp
    python -m stages.report --exp 'exp-*' --where seed=0     # a subset: names (globs), commits, param values
"""
import argparse
from pathlib import Path

from dcgan import cli
from dcgan.report import collect, site


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("report"), help="the site's folder (index.html inside)")
    ap.add_argument("--exp", action="append", default=[], metavar="NAME",
                    help="only experiments with this name (a glob; repeatable)")
    ap.add_argument("--commit", action="append", default=[], metavar="SHA",
                    help="only this commit and the experiments based on it (a prefix; repeatable)")
    ap.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                    help="only experiments with this param value, as -S takes it (repeatable)")
    ap.add_argument("--commits", type=int, default=None, metavar="N",
                    help="the last N commits of the branch and their experiments (default: all)")
    ap.add_argument("--title", default="DCGAN experiments")
    args = ap.parse_args()
    where = {}
    for item in args.where:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise cli.UserError(f"--where {item!r}: expected KEY=VALUE, e.g. --where seed=0")
        where[key] = value
    if not Path(".dvc").is_dir():
        raise cli.UserError("no .dvc folder here: run the report from the repository's root")
    site.build(Path("."), args.out, collect.Selection(args.exp, args.commit, where), args.commits, args.title)
    print(f"open {args.out / 'index.html'} in a browser")


if __name__ == "__main__":
    cli.run(main)
