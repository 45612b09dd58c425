/* Intrusive doubly linked lists: an element embeds `prev` and `next` pointers of its own type,
 * and the list is a head pointer (and, for a FIFO, a tail pointer) held by its owner. One
 * implementation for every list in the daemon: connections, commands waiting for Redis, curl's
 * sockets and requests, Stripe calls, reads of Stripe's state. Nothing is allocated; an element
 * is in at most one list through these members. */
#ifndef RIVET_LIST_H
#define RIVET_LIST_H

/* Put el first in the list at head. */
#define RV_LIST_PUSH(head, el)                                                                     \
    do {                                                                                           \
        (el)->prev = NULL;                                                                         \
        (el)->next = (head);                                                                       \
        if (head) (head)->prev = (el);                                                             \
        (head) = (el);                                                                             \
    } while (0)

/* Put el last in the FIFO from head to tail. */
#define RV_LIST_APPEND(head, tail, el)                                                             \
    do {                                                                                           \
        (el)->next = NULL;                                                                         \
        (el)->prev = (tail);                                                                       \
        if (tail)                                                                                  \
            (tail)->next = (el);                                                                   \
        else                                                                                       \
            (head) = (el);                                                                         \
        (tail) = (el);                                                                             \
    } while (0)

/* Take el out of the FIFO from head to tail. */
#define RV_LIST_UNLINK(head, tail, el)                                                             \
    do {                                                                                           \
        if ((el)->prev)                                                                            \
            (el)->prev->next = (el)->next;                                                         \
        else                                                                                       \
            (head) = (el)->next;                                                                   \
        if ((el)->next)                                                                            \
            (el)->next->prev = (el)->prev;                                                         \
        else                                                                                       \
            (tail) = (el)->prev;                                                                   \
        (el)->prev = (el)->next = NULL;                                                            \
    } while (0)

/* Take el out of the list at head (a list without a tail pointer). */
#define RV_LIST_REMOVE(head, el)                                                                   \
    do {                                                                                           \
        if ((el)->prev)                                                                            \
            (el)->prev->next = (el)->next;                                                         \
        else                                                                                       \
            (head) = (el)->next;                                                                   \
        if ((el)->next) (el)->next->prev = (el)->prev;                                             \
        (el)->prev = (el)->next = NULL;                                                            \
    } while (0)

#endif
