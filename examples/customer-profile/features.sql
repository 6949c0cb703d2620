-- The features of every user, one row per user_id, with no filter of its own:
-- online, the predictor runtime runs it for the requested ids only (as a subquery
-- filtered by `user_id IN (...)`, the ids bound as parameters); the batch scorer
-- streams it whole. Portable SQL: it runs on SQLite, DuckDB and PostgreSQL.
SELECT
    u.user_id,
    u.age,
    u.country,
    COUNT(e.user_id) AS n_events,
    AVG(e.amount) AS avg_amount,
    AVG(CASE WHEN e.category = 'beauty' THEN 1.0 ELSE 0.0 END) AS share_beauty,
    AVG(CASE WHEN e.category = 'fashion' THEN 1.0 ELSE 0.0 END) AS share_fashion,
    AVG(CASE WHEN e.category = 'home' THEN 1.0 ELSE 0.0 END) AS share_home,
    AVG(CASE WHEN e.category = 'books' THEN 1.0 ELSE 0.0 END) AS share_books,
    AVG(CASE WHEN e.category = 'sports' THEN 1.0 ELSE 0.0 END) AS share_sports,
    AVG(CASE WHEN e.category = 'electronics' THEN 1.0 ELSE 0.0 END) AS share_electronics,
    AVG(CASE WHEN e.category = 'gaming' THEN 1.0 ELSE 0.0 END) AS share_gaming,
    AVG(CASE WHEN e.category = 'diy' THEN 1.0 ELSE 0.0 END) AS share_diy
FROM users AS u
LEFT JOIN events AS e ON e.user_id = u.user_id
GROUP BY u.user_id, u.age, u.country
