-- Run once by the PostgreSQL image when its data directory is created (as the postgres
-- superuser). Plinth's DATABASE_URL role (`plinth`, owner of database `plinth`) creates
-- each data set's schema and login roles itself, so it needs CREATEROLE; it is not, and
-- need not be, a superuser. Plugins never use it: their connections log in as the data
-- set roles (see docs/OPERATIONS.md, "Data sets on PostgreSQL and SQLite").
ALTER ROLE plinth CREATEROLE;
