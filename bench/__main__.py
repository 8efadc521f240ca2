"""./dev bench [NAME ...]: run the named benchmarks (default: all of them)."""
import importlib
import sys

BENCHMARKS = ['api', 'server', 'scale', 'images', 'connections', 'bodies']


def main(names):
    for name in names or BENCHMARKS:
        try:
            module = importlib.import_module('bench.' + name)
        except ModuleNotFoundError:
            print('no benchmark named %r' % name)
            continue
        module.main()


if __name__ == '__main__':
    main(sys.argv[1:])
