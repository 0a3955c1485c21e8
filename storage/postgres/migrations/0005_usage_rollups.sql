-- Schema version 5: the usage rollups, merged from their own branch. This
-- file only holds the version's place until then.
SELECT 1;
