# diffattr: training-data attribution for diffusion models (Mlodozeniec et al., ICLR 2025).
# Wiring only: the rules live in rules/, the logic in src/diffattr/.
from snakemake.utils import min_version

from diffattr.config import validate_config

min_version("9.0")


configfile: "config.yaml"


# Validate (and fill defaults) at parse time: an invalid key fails here, naming the key and the allowed values.
config.update(validate_config(config, source="config (config.yaml and any --configfile)"))


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/measure.smk"
include: "rules/influence.smk"
include: "rules/baselines.smk"
include: "rules/evaluate.smk"
include: "rules/attribute.smk"
include: "rules/ablations.smk"


rule all:
    input:
        all_targets(),
    default_target: True
