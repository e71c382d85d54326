"""``fastcsi data``: inspect, convert and sample datasets."""
import click


@click.group()
def data():
    """Inspect, convert and sample datasets (info, convert, sample)."""
