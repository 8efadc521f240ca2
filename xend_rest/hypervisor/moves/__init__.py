"""Moving guests between hosts: operations (long actions on threads of their own), migration,
and a host's maintenance. May import what hypervisor/ may, and its modules."""
