"""Configs: the defaults every ``configs/*.py`` file starts from, the checks a config passes
before any compute, config files loaded by path, and the published recipes
(:mod:`kdjax.config.recipes`)."""

from kdjax.config._check import check_config as check_config
from kdjax.config._check import check_fields as check_fields
from kdjax.config._check import resolve_num_steps as resolve_num_steps
from kdjax.config._check import with_defaults as with_defaults
from kdjax.config._defaults import default_config as default_config
from kdjax.config._defaults import smoke_variant as smoke_variant
from kdjax.config._files import CONFIG_ROOT as CONFIG_ROOT
from kdjax.config._files import check_config_arg as check_config_arg
from kdjax.config._files import load_config as load_config
from kdjax.config._files import load_module as load_module
from kdjax.config._files import override as override
from kdjax.config._files import resolve_config_path as resolve_config_path
