"""`make bench`: every benchmark in turn."""

from __future__ import annotations

from bench import explainers, http_serving


def main() -> None:
    for module in (http_serving, explainers):
        print(f"\n##### {module.__name__}")
        module.main()


if __name__ == "__main__":
    main()
