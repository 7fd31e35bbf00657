"""``python -m sweep.data.synthetic output=DIR key=value ...``."""

from sweep.data.synthetic.files import main

main()
