"""Real, throwaway servers for the test suite (PostgreSQL 15, Redis) — never mocks."""
