"""What a data folder holds, from the command line: its layout (lib/layouts.py's LAYOUTS: ISIC 2016, 2017, 2018,
PH2, plain folders) and its pairs per split; a small synthetic set; any layout re-laid as plain folders. What a
training run makes of a folder (decoding, the cache, the splits): data.py; downloads: tools/download.py.

    python tools/data_folder.py --data-dir ../shared/isic2016         # which layout, and its pairs per split
    python tools/data_folder.py --synthetic demo/data                 # a small fake data set, ISIC 2016 layout
    python tools/data_folder.py --data-dir ../shared/isic2016 --to-plain runs/isic2016-plain   # as plain folders
"""

import project_root  # noqa: F401 (first: lib/ and the top-level modules import from the project's root)

from lib import cli
from lib.layouts import copy_as_plain_folders, detect_layout, find_pairs, present_groups
from lib.synthetic import write_synthetic


def main(argv=None):
    parser = cli.parser(__doc__)
    cli.add_data_dir_flag(parser)
    parser.add_argument("--synthetic", metavar="DIR", help="write a small synthetic data set to DIR first")
    parser.add_argument("--to-plain", metavar="DIR", help="copy --data-dir into plain folders in DIR")
    args = parser.parse_args(argv)
    if args.synthetic:
        write_synthetic(args.synthetic, n_train=160, n_test=32)
        args.data_dir = args.synthetic
    if args.to_plain:
        copy_as_plain_folders(args.data_dir, args.to_plain)
        args.data_dir = args.to_plain
    counts = ", ".join(f"{group} {len(find_pairs(args.data_dir, group))}" for group in present_groups(args.data_dir))
    print(f"{detect_layout(args.data_dir)} in {args.data_dir}: image/mask pairs: {counts}")


if __name__ == "__main__":
    cli.run(main)
