"""Composition root: config -> board, outbox, cloud adapter; starts the tasks."""
from firmware import log


def main():
    log.error("app", "the main loop is not built yet")
